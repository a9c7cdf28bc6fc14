"""DATE train-step speed with synthetic on-device batches: images/s, step time, compile time, peak memory.

    python benchmarks/train_step.py [--variant f|r|3dmf] [--size 512 512] [--batch 2] [--dtype float32|bfloat16]
        [--steps 5] [--repeats 3] [--peer torchvision] [--out benchmarks/results/train_step.json]

The whole jitted step (uint8 normalisation -> ResNet-50/FPN/DATE head -> POTO + o2m assignment -> DATE loss -> grads ->
clip -> AdamW) runs on a fixed batch that is already on the device, so only the device work is timed. Compile time is
`lower().compile()` of that step. Peak memory is the backend's `peak_bytes_in_use` where it reports one (GPU/TPU), and
XLA's static estimate (arguments + temporaries of the compiled step) everywhere.

`--peer torchvision` also builds torchvision's FCOS-R50-FPN train step (benchmarks/peers/torchvision_fcos.py) at the
same size and batch, and interleaves the two: each of `--repeats` rounds times `--steps` DATE steps then `--steps`
torchvision steps, so both see the same machine load; the table gives medians and the ratio DATE / torchvision.
Runs on any backend (CPU, GPU, TPU); no TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from date_jax import config as config_lib
from date_jax import runtime, sharding
from date_jax.models import detector
from date_jax.runtime import conv_grad
from date_jax.train import optimizer, setup
from date_jax.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONV_OPS = {"xla": lax.conv_general_dilated, "matmul": conv_grad.conv_general_dilated}

VARIANTS = {"f": dict(o2o="point", o2m="fcos"), "r": dict(o2o="point", o2m="retina"),
            "3dmf": dict(o2o="3dmf", o2m="fcos")}
NUM_CLASSES = 80


def write_json(result: dict[str, Any], path: str) -> None:
    """Write a benchmark's result dict as JSON to `path` (parents created) and say where."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def benchmark_config(variant: str, dtype: str, batch: int, max_boxes: int, tiny: bool = False
                     ) -> config_lib.ConfigDict:
    """The released DATE-R50 recipe for `variant` ('f' | 'r' | '3dmf'), computing in `dtype`, no pretrained weights."""
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r} is not one of {sorted(VARIANTS)}")
    config = config_lib.base_config()
    config.dtype = dtype
    if tiny:
        config.model = config_lib.tiny_model_config(num_classes=NUM_CLASSES, o2m=VARIANTS[variant]["o2m"])
    config.model.o2o = VARIANTS[variant]["o2o"]
    config.model.o2m = VARIANTS[variant]["o2m"]
    config.data.batch_size = batch
    config.data.max_boxes = max_boxes
    config.init_from.backbone = ""
    return config


def synthetic_batch(batch: int, image_hw: tuple[int, int], max_boxes: int, num_gts: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """A COCO-like host batch (docs/design.md §2): random uint8 images [B,H,W,3], `num_gts` boxes of 16-300 px per
    image."""
    rng = np.random.default_rng(seed)
    h, w = image_hw
    num_gts = min(num_gts, max_boxes)
    size = np.exp(rng.uniform(np.log(16), np.log(min(300, h, w) - 1), (batch, max_boxes, 2)))
    corner = rng.uniform(0, 1, (batch, max_boxes, 2)) * np.maximum([w, h] - size, 1)
    boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
    mask = np.broadcast_to(np.arange(max_boxes) < num_gts, (batch, max_boxes)).copy()
    return {
        "image": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8),
        "boxes": np.where(mask[..., None], boxes, 0.0).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, (batch, max_boxes)).astype(np.int32),
        "box_mask": mask,
        "image_shape": np.tile(np.array([h, w], np.int32), (batch, 1)),
        "scale": np.ones((batch, 2), np.float32),
        "example_mask": np.ones((batch,), bool),
    }


def peak_bytes(device: jax.Device) -> int | None:
    """The backend's peak allocation on `device` in bytes, or None where it keeps no statistics (CPU)."""
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def static_bytes(compiled: Any) -> int | None:
    """XLA's estimate for a compiled executable: argument + output + temporary bytes, or None if not reported."""
    try:
        analysis = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
               - analysis.alias_size_in_bytes)


def step_flops(compiled: Any) -> float | None:
    """XLA's count of floating-point operations of one call of a compiled executable, or None if not reported."""
    try:
        analysis = compiled.cost_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def jitted_train_step(config: config_lib.ConfigDict, model: Any, params: Any
                      ) -> tuple[step_lib.StepFn, optimizer.Optimizer, Any]:
    """The real jitted train step of `config` (`setup.jit_step`, as training runs it) for `model`, its optimizer
    (built from `params`, concrete or abstract) and the mesh it shards over."""
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(config.data.batch_size, mesh)
    optim = optimizer.make_optimizer(config, params, 0)
    return setup.jit_step(model, optim, config, mesh), optim, mesh


def build_date_train_step(variant: str, image_hw: tuple[int, int], batch: int, dtype: str, max_boxes: int,
                          num_gts: int, tiny: bool = False, conv: str = "matmul"
                          ) -> tuple[Callable[[], None], dict[str, Any]]:
    """A zero-argument callable running one blocking DATE train step on a fixed device batch, and compile facts;
    the model's convs take their kernel gradients from `CONV_OPS[conv]`."""
    config = benchmark_config(variant, dtype, batch, max_boxes, tiny)
    model = detector.build_model(config, CONV_OPS[conv])
    variables = jax.device_get(detector.init_variables(model, jax.random.PRNGKey(0), image_hw))
    step, optim, mesh = jitted_train_step(config, model, variables["params"])
    state = setup.replicated_state(variables, optim.tx, mesh)
    device_batch = sharding.device_put_batch(synthetic_batch(batch, image_hw, max_boxes, num_gts), mesh)
    start = time.perf_counter()
    compiled = step.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = compiled(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    run()  # first execution (allocations, autotuning on GPU)
    facts = dict(compile_s=compile_s, static_bytes=static_bytes(compiled), gflops=(step_flops(compiled) or 0) / 1e9,
                 num_params=int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))))
    return run, facts


def build_breakdown(variant: str, image_hw: tuple[int, int], batch: int, dtype: str, max_boxes: int, num_gts: int,
                    tiny: bool = False) -> tuple[dict[str, Callable[[], None]], dict[str, float]]:
    """Runners for the parts of the step: the network's forward, forward + backward + AdamW with a plain sum loss,
    and assignment + DATE loss forward + backward on fixed network outputs; and their compile seconds."""
    config = benchmark_config(variant, dtype, batch, max_boxes, tiny)
    mesh = sharding.make_mesh()
    model = detector.build_model(config, runtime.conv_op())
    variables = detector.init_variables(model, jax.random.PRNGKey(0), image_hw)
    tx = optimizer.make_optimizer(config, variables["params"], 0).tx
    opt_state = tx.init(variables["params"])
    device_batch = sharding.device_put_batch(synthetic_batch(batch, image_hw, max_boxes, num_gts), mesh)
    images = device_batch["image"]

    def forward(variables, images):
        return model.apply(variables, images)

    def network_step(params, opt_state, images):
        def plain_loss(params):
            outputs = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images)
            return sum(jnp.mean(x.astype(jnp.float32)) for x in jax.tree.leaves(outputs))
        grads = jax.grad(plain_loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state

    rng = np.random.default_rng(1)
    outputs = {k: jnp.asarray(rng.normal(-4.0 if "logits" in k else 0.0, 1.0, v.shape).astype(np.float32)
                              if "ltrb" not in k else rng.uniform(0, 128, v.shape).astype(np.float32))
               for k, v in jax.eval_shape(forward, variables, images).items()}

    def assign_and_loss(outputs, batch):
        return jax.grad(lambda o: step_lib.batch_loss(o, batch, config, mesh)[0])(outputs)

    parts = {"network forward": (forward, (variables, images)),
             "network fwd+bwd+AdamW (sum loss)": (network_step, (variables["params"], opt_state, images)),
             "assignment + loss fwd+bwd": (assign_and_loss, (outputs, device_batch))}
    runners, compile_s = {}, {}
    for name, (fn, args) in parts.items():
        start = time.perf_counter()
        compiled = jax.jit(fn, compiler_options=runtime.compiler_options()).lower(*args).compile()
        compile_s[name] = time.perf_counter() - start

        def run(compiled=compiled, args=args) -> None:
            jax.block_until_ready(compiled(*args))

        run()
        runners[name] = run
    return runners, compile_s


def time_steps(run: Callable[[], None], steps: int) -> list[float]:
    """Wall seconds of each of `steps` blocking calls of `run`."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on: device kind, backend, host, cores, jax version, XLA flags and options,
    whether date-jax's CPU tuning is on (date_jax/runtime)."""
    device = jax.devices()[0]
    return dict(device=getattr(device, "device_kind", str(device)), backend=jax.default_backend(),
                num_devices=jax.device_count(), host_cpu=platform.processor() or platform.machine(),
                cpu_cores=os.cpu_count(), jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
                compiler_options=runtime.compiler_options(), cpu_tuned=runtime.cpu_tuned(),
                cpu_heap_retained=runtime.cpu_tuned() and not jax.config.read("jax_cpu_enable_async_dispatch"))


def interleaved(runners: dict[str, Callable[[], None]], steps: int, repeats: int) -> dict[str, list[float]]:
    """Per runner, every step time of `repeats` rounds, each round running every runner `steps` times in turn."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].extend(time_steps(run, steps))
    return times


def summarise(times: list[float], batch: int) -> dict[str, float]:
    """Median / min step seconds and images per second from step times."""
    median = statistics.median(times)
    return dict(step_s_median=median, step_s_min=min(times), images_per_s=batch / median, steps_timed=len(times))


def fmt_bytes(value: int | None) -> str:
    """Bytes as GiB with two decimals, or '-' when unknown."""
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="f", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--max-boxes", type=int, default=32)
    parser.add_argument("--gts", type=int, default=8, help="ground-truth boxes per image")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (interleaved with the peer when given)")
    parser.add_argument("--peer", default="", choices=("", "torchvision"))
    parser.add_argument("--conv-grad", default="", choices=("", "xla", "matmul"),
                        help="kernel gradients of convs as XLA convs or as matmuls (default: the runtime's choice)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts: network forward, network fwd+bwd, assignment + loss")
    parser.add_argument("--tiny", action="store_true", help="the test-size model (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/train_step.json"))
    args = parser.parse_args()
    image_hw = tuple(args.size)
    args.conv_grad = args.conv_grad or ("matmul" if runtime.conv_op() is conv_grad.conv_general_dilated else "xla")

    run, facts = build_date_train_step(args.variant, image_hw, args.batch, args.dtype, args.max_boxes, args.gts,
                                       args.tiny, args.conv_grad)
    runners = {"date": run}
    peer_facts: dict[str, Any] = {}
    if args.peer:
        from peers import torchvision_fcos
        runners["torchvision_fcos"], peer_facts = torchvision_fcos.build_train_step(
            image_hw, args.batch, args.max_boxes, args.gts, NUM_CLASSES)
        runners["torchvision_fcos"]()  # warm-up
    part_compile_s: dict[str, float] = {}
    if args.breakdown:
        parts, part_compile_s = build_breakdown(args.variant, image_hw, args.batch, args.dtype, args.max_boxes,
                                                args.gts, args.tiny)
        runners.update(parts)
    times = interleaved(runners, args.steps, args.repeats)
    result = dict(machine_facts(), conv_grad=args.conv_grad, variant=args.variant, size=list(image_hw),
                  batch=args.batch, dtype=args.dtype, tiny=args.tiny, peak_bytes=peak_bytes(jax.devices()[0]), **facts,
                  date=summarise(times["date"], args.batch))
    if args.breakdown:
        result["parts"] = {name: dict(compile_s=part_compile_s[name], **summarise(times[name], args.batch))
                           for name in part_compile_s}
    if args.peer:
        result["peer"] = dict(peer_facts, **summarise(times["torchvision_fcos"], args.batch))
        result["ratio_date_over_peer"] = result["date"]["step_s_median"] / result["peer"]["step_s_median"]

    name = f"DATE-R50-{args.variant.upper()}" + (" (tiny)" if args.tiny else "")
    print(f"train step | {result['device']} ({result['backend']}, {result['cpu_cores']} host cores) | "
          f"{image_hw[0]}x{image_hw[1]} batch {args.batch} {args.dtype} | conv grads: {args.conv_grad} | "
          f"median of {len(times['date'])} steps")
    print(f"{'model':28s} {'step s':>8s} {'min s':>8s} {'img/s':>8s} {'compile s':>10s} {'peak mem':>10s} "
          f"{'XLA est.':>10s}")
    d = result["date"]
    print(f"{name:28s} {d['step_s_median']:8.3f} {d['step_s_min']:8.3f} {d['images_per_s']:8.2f} "
          f"{facts['compile_s']:10.1f} {fmt_bytes(result['peak_bytes']):>10s} {fmt_bytes(facts['static_bytes']):>10s}")
    if args.peer:
        p = result["peer"]
        print(f"{'torchvision FCOS-R50-FPN':28s} {p['step_s_median']:8.3f} {p['step_s_min']:8.3f} "
              f"{p['images_per_s']:8.2f} {'-':>10s} {'-':>10s} {'-':>10s}")
    for part, timing in result.get("parts", {}).items():
        print(f"  part: {part:34s} {timing['step_s_median']:8.3f} s  "
              f"({timing['step_s_median'] / d['step_s_median']:5.1%} of the step; compile {timing['compile_s']:.1f} s)")
    print(f"XLA cost analysis: {facts['gflops']:.1f} GFLOP per step -> {facts['gflops'] / d['step_s_median']:.1f} "
          f"GFLOP/s; {facts['num_params'] / 1e6:.1f} M params")
    if args.peer:
        print(f"ratio DATE / torchvision (step time): {result['ratio_date_over_peer']:.2f}x  "
              f"(torch {result['peer']['torch']}, {result['peer']['threads']} threads)")
    write_json(result, args.out)


if __name__ == "__main__":
    runtime.configure(tensorflow=False)   # first: before JAX creates its client
    main()
