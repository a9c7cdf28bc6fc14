"""Predicted accelerator performance of DATE-R50-F from XLA's own analyses of the compiled step, checked against an
analytic FLOP count of the network.

    python benchmarks/accelerator_model.py measure --kind train --batch 2 [--dtype bfloat16]
    python benchmarks/accelerator_model.py measure --kind predict --batch 1
    python benchmarks/accelerator_model.py report [--flop-utilisation 0.4] [--bandwidth-utilisation 0.7]

`measure` lowers and compiles (never runs) one executable on this host's backend and merges its figures into
`benchmarks/results/accelerator_model.json`: the real jitted train step (`setup.jit_step`, built by
`train_step.jitted_train_step`) or the NMS-free predict (`Predictor`, lowered by `inference.lower_predict`) of
`configs/date_r50_fcos_1x_coco.py` (DATE-R50-F, bf16, max_boxes 100) at 800x1344, on abstract inputs
(`jax.ShapeDtypeStruct`: nothing the size of a batch or a model is allocated). The model is built as an accelerator
builds it: stock `lax` convolutions and no XLA CPU options (the CPU tuning of `date_jax/runtime` stays off). One
compile per process, so each can run in its own lock hold. Recorded: `compiled.cost_analysis()` (FLOPs, bytes
accessed) and `compiled.memory_analysis()` (argument, output, temporary, alias and generated-code bytes).

`report` (no compile) derives from the measured entries: the roofline step time of each device in `DEVICES`
(ideal: max(FLOPs / peak, bytes / bandwidth); realistic: the same at the stated utilisations), images/s, the largest
per-device batch that fits (linear fit of XLA's memory estimate over the measured batches, a stated share of HBM
usable), and the analytic FLOP count (`date_r50_convs`, `train_flops`) next to XLA's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import time
from typing import Any, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/accelerator_model.json"
CONFIG_FILE = ROOT / "configs/date_r50_fcos_1x_coco.py"
IMAGE_HW = (800, 1344)
MAX_BOXES = 100

# Peak dense bf16 FLOP/s, HBM bandwidth (bytes/s) and HBM capacity (bytes) per device, with their sources.
DEVICES = {
    "H100 SXM": dict(
        peak_flops=989e12, bandwidth=3.35e12, hbm_bytes=80e9,
        source="NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/ : BF16 Tensor Core 1,979 TFLOPS "
               "'with sparsity' (dense = half, 989), 80 GB HBM3, 3.35 TB/s; the same table is reproduced at "
               "https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html ('Specifications 1/2 lower without "
               "sparsity') and https://glennklockwood.com/garden/processors/h100 (BF16 matrix 989.4 dense)"),
    "H200": dict(
        peak_flops=989e12, bandwidth=4.8e12, hbm_bytes=141e9,
        source="NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/ : BF16 Tensor Core 1,979 TFLOPS "
               "with sparsity (the H100's GH100 compute; dense 989), 141 GB HBM3e, 4.8 TB/s; confirmed at "
               "https://lzwjava.github.io/nvidia-h200-gpu-specs-en and https://aiwiki.ai/wiki/nvidia_h200"),
    "TPU v5e": dict(
        peak_flops=197e12, bandwidth=819e9, hbm_bytes=16 * 2**30,
        source="Google Cloud TPU docs, https://cloud.google.com/tpu/docs/v5e : peak compute per chip (bf16) "
               "197 TFLOPs, HBM2 16 GB at 819 GBps (capacity taken as 16 GiB)"),
    "TPU v4": dict(
        peak_flops=275e12, bandwidth=1200e9, hbm_bytes=32 * 2**30,
        source="Google Cloud TPU docs, https://cloud.google.com/tpu/docs/v4 : peak compute per chip 275 teraflops "
               "(bf16), HBM2 32 GiB at 1200 GBps (one chip = two TensorCores, one JAX device)"),
}
USABLE_HBM = 0.90           # share of HBM for the step's buffers (runtime, allocator slack, fragmentation)
JAX_GPU_POOL = 0.75         # JAX's default GPU pool (XLA_PYTHON_CLIENT_MEM_FRACTION) without any setting


@dataclasses.dataclass(frozen=True)
class Conv:
    """One 2-D convolution applied once per image: input (h, w), channels, square kernel with PyTorch padding
    kernel // 2, stride; which gradients the train step needs (weight: trainable; input: something trainable lies
    upstream of it)."""

    name: str
    in_hw: tuple[int, int]
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    weight_grad: bool = True
    input_grad: bool = True

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (h, w): floor((n + 2 * (k // 2) - k) / s) + 1 per axis."""
        pad = self.kernel // 2
        return tuple((n + 2 * pad - self.kernel) // self.stride + 1 for n in self.in_hw)


def valid_taps(size: int, kernel: int, stride: int) -> int:
    """(output position, kernel tap) pairs of one axis that read the input, not its zero padding of kernel // 2."""
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    index = np.arange(out)[:, None] * stride - pad + np.arange(kernel)[None, :]
    return int(np.sum((index >= 0) & (index < size)))


def conv_macs(conv: Conv, skip_padding: bool = False) -> int:
    """Multiply-accumulates of one forward pass of `conv` for one image: every output position x every kernel tap
    (what the hardware computes), or with `skip_padding` only the taps that read the input (what XLA counts)."""
    if skip_padding:
        taps = valid_taps(conv.in_hw[0], conv.kernel, conv.stride) * valid_taps(conv.in_hw[1], conv.kernel,
                                                                                 conv.stride)
    else:
        taps = conv.out_hw[0] * conv.out_hw[1] * conv.kernel ** 2
    return taps * conv.cin * conv.cout


def forward_flops(convs: Sequence[Conv], skip_padding: bool = False) -> int:
    """FLOPs (2 per MAC) of the forward pass of `convs`, per image."""
    return 2 * sum(conv_macs(c, skip_padding) for c in convs)


def train_flops(convs: Sequence[Conv], skip_padding: bool = False) -> int:
    """FLOPs per image of forward + backward: each conv costs its forward MACs once more for its weight gradient
    and once more for its input gradient, when the step needs them."""
    return 2 * sum(conv_macs(c, skip_padding) * (1 + c.weight_grad + c.input_grad) for c in convs)


def date_r50_convs(image_hw: tuple[int, int], num_classes: int = 80, depth: int = 50, frozen_stages: int = 1,
                   fpn_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4, o2o: bool = True,
                   o2m: str = "fcos") -> list[Conv]:
    """Every convolution of DATE-R{depth} (caffe bottlenecks: stride on conv1) + FPN P3-P7 + the DATE head at
    `image_hw`: shared cls/reg towers and the one-to-one / FCOS one-to-many predictors on each level (docs/spec.md
    §2.1-§3.3). The stem and stages 1..`frozen_stages` have no weight gradient and nothing below stage
    `frozen_stages + 1` needs an input gradient."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    convs = [Conv("stem", image_hw, 3, 64, 7, 2, weight_grad=frozen_stages < 0, input_grad=False)]
    hw = convs[0].out_hw
    hw = tuple((n + 2 - 3) // 2 + 1 for n in hw)        # max-pool 3x3/2, padding 1
    cin, features = 64, []
    for s, count in enumerate(blocks):
        planes, frozen = 64 * 2 ** s, s + 1 <= frozen_stages
        for b in range(count):
            stride = 2 if s > 0 and b == 0 else 1
            grad_in = not frozen and not (b == 0 and s == frozen_stages)   # the first trainable block reads frozen
            name = f"layer{s + 1}_{b}"
            first = Conv(f"{name}/conv1", hw, cin, planes, 1, stride, not frozen, grad_in)
            mid = Conv(f"{name}/conv2", first.out_hw, planes, planes, 3, 1, not frozen, not frozen)
            last = Conv(f"{name}/conv3", first.out_hw, planes, 4 * planes, 1, 1, not frozen, not frozen)
            convs += [first, mid, last]
            if b == 0:
                convs.append(Conv(f"{name}/downsample_0", hw, cin, 4 * planes, 1, stride, not frozen, grad_in))
            hw, cin = last.out_hw, 4 * planes
        features.append((hw, cin))
    levels = []
    for i, (level_hw, channels) in enumerate(features[1:]):
        convs.append(Conv(f"neck/lateral_convs_{i}", level_hw, channels, fpn_channels, 1))
        convs.append(Conv(f"neck/fpn_convs_{i}", level_hw, fpn_channels, fpn_channels, 3))
        levels.append(level_hw)
    for i in range(2):
        extra = Conv(f"neck/fpn_convs_{3 + i}", levels[-1], fpn_channels, fpn_channels, 3, 2)
        convs.append(extra)
        levels.append(extra.out_hw)
    outputs = ([("o2o_cls", "cls", num_classes), ("o2o_reg", "reg", 4)] if o2o else [])
    outputs += {"fcos": [("o2m_cls", "cls", num_classes), ("o2m_reg", "reg", 4), ("o2m_ctr", "cls", 1)],
                "retina": [("o2m_cls", "cls", 9 * num_classes), ("o2m_reg", "reg", 36)], "none": []}[o2m]
    for level, level_hw in enumerate(levels):
        for tower in ("cls", "reg"):
            for i in range(stacked_convs):
                cin = fpn_channels if i == 0 else feat_channels
                convs.append(Conv(f"head/{tower}_convs_{i}@P{level + 3}", level_hw, cin, feat_channels, 3))
        for name, _, cout in outputs:
            convs.append(Conv(f"head/{name}@P{level + 3}", level_hw, feat_channels, cout, 3))
    return convs


def conv_bytes(conv: Conv, itemsize: int = 2, train: bool = True) -> int:
    """HBM bytes one image's `conv` must move at least (each tensor read or written once per pass, `itemsize`
    bytes): forward reads input and kernel, writes output; the weight gradient reads input and output gradient,
    writes the kernel gradient; the input gradient reads output gradient and kernel, writes the input gradient."""
    x = conv.in_hw[0] * conv.in_hw[1] * conv.cin
    y = conv.out_hw[0] * conv.out_hw[1] * conv.cout
    w = conv.kernel ** 2 * conv.cin * conv.cout
    total = x + w + y
    if train:
        total += (x + y + w) * conv.weight_grad + (y + w + x) * conv.input_grad
    return total * itemsize


def hlo_census(hlo_text: str) -> dict[str, int]:
    """Convolutions and dots of an optimized HLO module by element type of their result ('conv_f32', 'dot_bf16',
    ...) and the number of `convert` ops: shows whether the backend computes bf16 convolutions as float32."""
    census: dict[str, int] = {}
    for line in hlo_text.splitlines():
        op = ("conv" if " convolution(" in line or (" custom-call(" in line and "conv" in line.lower())
              else "dot" if " dot(" in line else "")
        if op:
            kind = line.split("=", 1)[1].strip().split("[", 1)[0]
            census[f"{op}_{kind}"] = census.get(f"{op}_{kind}", 0) + 1
        elif " convert(" in line:
            census["convert"] = census.get("convert", 0) + 1
    return census


def cost_figures(compiled: Any) -> dict[str, float]:
    """FLOPs, bytes accessed and transcendentals of one call from `compiled.cost_analysis()`, which is a dict in
    current jax and a list of one dict per executable (one here) in older versions."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", float("nan"))),
            "bytes_accessed": float(analysis.get("bytes accessed", float("nan"))),
            "transcendentals": float(analysis.get("transcendentals", float("nan")))}


def memory_figures(compiled: Any) -> dict[str, int]:
    """`compiled.memory_analysis()` in bytes, and its peak estimate argument + output + temp - alias."""
    analysis = compiled.memory_analysis()
    names = ("argument", "output", "temp", "alias", "generated_code")
    figures = {name: int(getattr(analysis, f"{name}_size_in_bytes", 0)) for name in names}
    figures["peak_estimate"] = figures["argument"] + figures["output"] + figures["temp"] - figures["alias"]
    return figures


def measured_key(kind: str, dtype: str, batch: int) -> str:
    """Key of one measurement in the JSON: 'train/bfloat16/2'."""
    return f"{kind}/{dtype}/{batch}"


def model_config(batch: int, dtype: str) -> Any:
    """configs/date_r50_fcos_1x_coco.py with `batch` images per step, max_boxes 100, compute `dtype`, no weights."""
    from date_jax import cli
    config = cli.load_config_file(str(CONFIG_FILE))
    config.dtype = dtype
    config.data.batch_size = batch
    config.data.max_boxes = MAX_BOXES
    config.init_from.backbone = ""
    return config


def lower(kind: str, batch: int, dtype: str) -> Any:
    """The real train step or predict of DATE-R50-F lowered at 800x1344 on abstract (ShapeDtypeStruct) inputs."""
    # Imported here, not at the top, so that the analytic counter imports without jax or the benchmarks' own modules.
    import jax
    import jax.numpy as jnp
    from inference import lower_predict  # benchmarks/ (the script's own folder) is on sys.path
    from train_step import jitted_train_step, synthetic_batch

    from date_jax.models import detector
    from date_jax.predictor import Predictor
    from date_jax.train import step as step_lib

    config = model_config(batch, dtype)
    variables = detector.abstract_variables(config)
    if kind == "predict":
        images = jax.ShapeDtypeStruct((batch, *IMAGE_HW, 3), jnp.uint8)
        image_shape = jax.ShapeDtypeStruct((batch, 2), jnp.int32)
        return lower_predict(Predictor(config), variables, images, image_shape)
    model = detector.build_model(config)
    step, optim, _ = jitted_train_step(config, model, variables["params"])
    state = jax.eval_shape(lambda v: step_lib.create_state(v, optim.tx), variables)
    example = synthetic_batch(1, (64, 64), MAX_BOXES, 1)      # only its keys, dtypes and trailing shapes
    images = jax.ShapeDtypeStruct((batch, *IMAGE_HW, 3), jnp.uint8)
    abstract = {k: images if k == "image" else jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype)
                for k, v in example.items()}
    return step.lower(state, abstract)


def measure(kind: str, batch: int, dtype: str) -> dict[str, Any]:
    """Lower + compile one executable (no execution) and read XLA's cost and memory analyses."""
    import jax
    start = time.perf_counter()
    lowered = lower(kind, batch, dtype)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return dict(kind=kind, batch=batch, dtype=dtype, image_hw=list(IMAGE_HW), max_boxes=MAX_BOXES,
                backend=jax.default_backend(), jax=jax.__version__, lower_s=round(lower_s, 1),
                compile_s=round(compile_s, 1), host_peak_rss_gib=round(resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                cost=cost_figures(compiled), memory=memory_figures(compiled), hlo=hlo_census(compiled.as_text()))


def analytic(image_hw: tuple[int, int]) -> dict[str, Any]:
    """Analytic figures per image of DATE-R50-F: GFLOPs forward and train (every tap, and valid taps only), by part;
    the least bf16 traffic of its convolutions (GB)."""
    convs = date_r50_convs(image_hw)
    parts = {"backbone": [c for c in convs if c.name.startswith("layer") or c.name == "stem"],
             "neck": [c for c in convs if c.name.startswith("neck")],
             "head": [c for c in convs if c.name.startswith("head")]}
    return dict(
        forward_gflops=forward_flops(convs) / 1e9, train_gflops=train_flops(convs) / 1e9,
        forward_gflops_valid_taps=forward_flops(convs, True) / 1e9,
        train_gflops_valid_taps=train_flops(convs, True) / 1e9,
        forward_gflops_parts={k: forward_flops(v) / 1e9 for k, v in parts.items()},
        train_gflops_parts={k: train_flops(v) / 1e9 for k, v in parts.items()},
        forward_conv_gb=sum(conv_bytes(c, train=False) for c in convs) / 1e9,
        train_conv_gb=sum(conv_bytes(c) for c in convs) / 1e9)


def memory_fit(entries: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares fixed + per-image bytes of XLA's peak estimate over the measured train batches."""
    batches = np.array([e["batch"] for e in entries], float)
    peaks = np.array([e["memory"]["peak_estimate"] for e in entries], float)
    per_image, fixed = np.polyfit(batches, peaks, 1)
    return float(fixed), float(per_image)


def roofline(flops: float, xla_bytes: float, floor_bytes: float, device: dict[str, float], flop_util: float,
             bandwidth_util: float) -> dict[str, float]:
    """Seconds of one call on `device`. compute: FLOPs / peak; ideal: max(compute, XLA's bytes / bandwidth);
    floor: max(compute, the convolutions' least traffic / bandwidth); realistic: FLOPs / (flop_util * peak);
    pessimistic: max(realistic, XLA's bytes / (bandwidth_util * bandwidth))."""
    compute = flops / device["peak_flops"]
    xla_memory = xla_bytes / device["bandwidth"]
    realistic = compute / flop_util
    return dict(compute_s=compute, xla_memory_s=xla_memory, ideal_s=max(compute, xla_memory),
                floor_s=max(compute, floor_bytes / device["bandwidth"]), realistic_s=realistic,
                pessimistic_s=max(realistic, xla_memory / bandwidth_util))


def report(results: dict[str, Any], flop_util: float, bandwidth_util: float) -> dict[str, Any]:
    """Roofline predictions, memory fit, max batches and the FLOP check from the measured entries."""
    measured = results["measured"]
    entries = {kind: sorted((e for e in measured.values() if e["kind"] == kind and e["dtype"] == "bfloat16"),
                            key=lambda e: e["batch"]) for kind in ("train", "predict")}
    counted = analytic(IMAGE_HW)
    derived: dict[str, Any] = dict(
        assumptions=dict(flop_utilisation=flop_util, bandwidth_utilisation=bandwidth_util, usable_hbm=USABLE_HBM,
                         jax_gpu_pool=JAX_GPU_POOL, image_hw=list(IMAGE_HW), max_boxes=MAX_BOXES),
        devices=DEVICES, analytic=counted, flop_check=[], train={}, predict={}, max_batch={})
    for kind, reference, floor in (("train", "train_gflops", "train_conv_gb"),
                                   ("predict", "forward_gflops", "forward_conv_gb")):
        for e in entries[kind]:
            per_image = e["cost"]["flops"] / e["batch"] / 1e9
            derived["flop_check"].append(dict(kind=kind, batch=e["batch"], xla_gflops_per_image=per_image,
                                              analytic_gflops_per_image=counted[reference],
                                              ratio=per_image / counted[reference]))
        for name, device in DEVICES.items():
            rows = {}
            for e in entries[kind]:
                r = roofline(e["cost"]["flops"], e["cost"]["bytes_accessed"], counted[floor] * 1e9 * e["batch"],
                             device, flop_util, bandwidth_util)
                rows[str(e["batch"])] = dict(r, **{f"images_per_s_{k[:-2]}": e["batch"] / v for k, v in r.items()
                                                   if k in ("ideal_s", "floor_s", "realistic_s", "pessimistic_s")})
            derived[kind][name] = rows
    if len(entries["train"]) >= 2:
        fixed, per_image = memory_fit(entries["train"])
        derived["memory_fit"] = dict(fixed_bytes=fixed, per_image_bytes=per_image,
                                     batches=[e["batch"] for e in entries["train"]])
        for name, device in DEVICES.items():
            derived["max_batch"][name] = {
                f"{share:g}": int((share * device["hbm_bytes"] - fixed) // per_image)
                for share in (USABLE_HBM, JAX_GPU_POOL)}
    return derived


def print_report(results: dict[str, Any]) -> None:
    """The tables of `report` as text."""
    measured, derived = results["measured"], results["derived"]
    print("XLA analyses of the compiled executables (this host's backend; 800x1344, max_boxes 100):")
    print(f"{'executable':>20} {'GFLOP':>7} {'GFLOP/img':>9} {'GB acc.':>7} {'GB/img':>6} {'args GiB':>8} "
          f"{'out GiB':>7} {'temp GiB':>8} {'peak GiB':>8} {'compile s':>9}  convs/dots/converts")
    for key in sorted(measured, key=lambda k: (measured[k]["kind"], measured[k]["dtype"], measured[k]["batch"])):
        e, mem = measured[key], measured[key]["memory"]
        census = " ".join(f"{k}={v}" for k, v in sorted(e.get("hlo", {}).items()))
        print(f"{key:>20} {e['cost']['flops'] / 1e9:7.0f} {e['cost']['flops'] / 1e9 / e['batch']:9.0f} "
              f"{e['cost']['bytes_accessed'] / 1e9:7.1f} {e['cost']['bytes_accessed'] / 1e9 / e['batch']:6.1f} "
              f"{mem['argument'] / 2**30:8.2f} {mem['output'] / 2**30:7.2f} {mem['temp'] / 2**30:8.2f} "
              f"{mem['peak_estimate'] / 2**30:8.2f} {e['compile_s']:9.1f}  {census}")
    a = derived["analytic"]
    print(f"analytic, per image: forward {a['forward_gflops']:.0f} GFLOP "
          f"(valid taps {a['forward_gflops_valid_taps']:.0f}), train {a['train_gflops']:.0f} GFLOP "
          f"(valid taps {a['train_gflops_valid_taps']:.0f}; "
          + ", ".join(f"{k} {v:.0f}" for k, v in a["train_gflops_parts"].items())
          + f"); least conv traffic in bf16: forward {a['forward_conv_gb']:.2f} GB, train {a['train_conv_gb']:.2f} GB")
    for row in derived["flop_check"]:
        print(f"  FLOP check {row['kind']:>7} B={row['batch']:<2}: XLA {row['xla_gflops_per_image']:.0f} / analytic "
              f"{row['analytic_gflops_per_image']:.0f} GFLOP per image = {row['ratio']:.3f}")
    util = derived["assumptions"]
    for kind in ("train", "predict"):
        print(f"roofline, {kind} (ms and images/s; realistic = {util['flop_utilisation']:.0%} of peak FLOP/s; "
              f"pessimistic adds XLA-CPU bytes at {util['bandwidth_utilisation']:.0%} of bandwidth):")
        print(f"{'device':>9} {'B':>3} {'compute':>8} {'XLA bytes':>9} {'ideal':>7} {'img/s':>6} {'floor':>7} "
              f"{'realistic':>9} {'img/s':>6} {'pessim.':>8} {'img/s':>6}")
        for name, rows in derived[kind].items():
            for batch, r in rows.items():
                print(f"{name:>9} {batch:>3} {r['compute_s'] * 1e3:8.1f} {r['xla_memory_s'] * 1e3:9.1f} "
                      f"{r['ideal_s'] * 1e3:7.1f} {r['images_per_s_ideal']:6.0f} {r['floor_s'] * 1e3:7.1f} "
                      f"{r['realistic_s'] * 1e3:9.1f} {r['images_per_s_realistic']:6.0f} "
                      f"{r['pessimistic_s'] * 1e3:8.1f} {r['images_per_s_pessimistic']:6.0f}")
    if "memory_fit" in derived:
        fit = derived["memory_fit"]
        print(f"memory: peak estimate = {fit['fixed_bytes'] / 2**30:.2f} GiB + {fit['per_image_bytes'] / 2**30:.3f} "
              f"GiB per image (fit over B = {fit['batches']}); largest per-device batch at "
              f"{USABLE_HBM:.0%} / {JAX_GPU_POOL:.0%} of HBM: "
              + ", ".join(f"{n} {'/'.join(str(v) for v in m.values())}" for n, m in derived["max_batch"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("measure", help="compile one executable and merge its XLA figures into the JSON")
    one.add_argument("--kind", choices=("train", "predict"), required=True)
    one.add_argument("--batch", type=int, required=True, help="per-device batch (this host has one device)")
    one.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    both = sub.add_parser("report", help="roofline tables from the measured entries (no compile)")
    for p in (one, both):
        p.add_argument("--flop-utilisation", type=float, default=0.4)
        p.add_argument("--bandwidth-utilisation", type=float, default=0.7)
        p.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"measured": {}}
    if args.command == "measure":
        entry = measure(args.kind, args.batch, args.dtype)
        results["measured"][measured_key(args.kind, args.dtype, args.batch)] = entry
        print(f"{args.kind} B={args.batch} {args.dtype}: lower {entry['lower_s']} s, compile {entry['compile_s']} s, "
              f"host peak RSS {entry['host_peak_rss_gib']} GiB, {entry['cost']['flops'] / 1e9:.0f} GFLOP, "
              f"{entry['cost']['bytes_accessed'] / 1e9:.1f} GB accessed, peak estimate "
              f"{entry['memory']['peak_estimate'] / 2**30:.2f} GiB")
    results["derived"] = report(results, args.flop_utilisation, args.bandwidth_utilisation)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_report(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
