"""NMS-free DATE inference speed: jitted predict (uint8 normalisation -> network -> top-k decode) latency and
throughput.

    python benchmarks/inference.py [--variant f|r|3dmf] [--size 512 512] [--batches 1 8] [--dtype float32]
        [--steps 3] [--repeats 3] [--peer torchvision] [--out benchmarks/results/inference.json]

Per batch size: one compile, then `--repeats` rounds of `--steps` blocking calls on a fixed device batch (the
detections are fetched back to the host, as an evaluator would); latency is the median call time, throughput the
images per second at that median. `--peer torchvision` interleaves torchvision's FCOS-R50-FPN inference (its network
and its NMS decoding) at the same size and batch, round by round, and prints the ratio DATE / torchvision.
Random weights: with an untrained head every point scores near `prior_prob`, so the decoder's work is the same as for a
trained model (fixed top-k shapes). No TensorFlow.
"""
from __future__ import annotations

import argparse
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from train_step import (
    NUM_CLASSES,
    VARIANTS,
    benchmark_config,
    fmt_bytes,
    interleaved,
    machine_facts,
    peak_bytes,
    static_bytes,
    summarise,
    write_json,
)

from date_jax import runtime
from date_jax.models import detector
from date_jax.predictor import Predictor

ROOT = pathlib.Path(__file__).resolve().parents[1]


def lower_predict(predictor: Predictor, variables: Any, images: Any, image_shape: Any) -> jax.stages.Lowered:
    """The predictor's own jitted network + decode (the executable evaluation runs) lowered for these arguments:
    variables, images uint8 [B,H,W,3], image_shape int32 [B,2], concrete or `jax.ShapeDtypeStruct`s."""
    return predictor._predict.lower(variables, images, image_shape)


def build_date_predict(variant: str, image_hw: tuple[int, int], batch: int, dtype: str, tiny: bool = False
                       ) -> tuple[Callable[[], None], dict[str, Any]]:
    """A zero-argument callable running one jitted predict + decode on a fixed device batch, and compile facts."""
    config = benchmark_config(variant, dtype, batch, 1, tiny)
    predictor = Predictor(config)          # the executable evaluation and the Python API run
    variables = detector.init_variables(predictor.model, jax.random.PRNGKey(0), image_hw)

    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, *image_hw, 3), dtype=np.uint8))
    image_shape = jax.device_put(np.tile(np.array(image_hw, np.int32), (batch, 1)))
    start = time.perf_counter()
    compiled = lower_predict(predictor, variables, images, image_shape).compile()
    compile_s = time.perf_counter() - start

    def run() -> None:
        jax.device_get(compiled(variables, images, image_shape))

    run()
    return run, dict(compile_s=compile_s, static_bytes=static_bytes(compiled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="f", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 8))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3, help="timed calls per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (interleaved with the peer when given)")
    parser.add_argument("--peer", default="", choices=("", "torchvision"))
    parser.add_argument("--tiny", action="store_true", help="the test-size model (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/inference.json"))
    args = parser.parse_args()
    image_hw = tuple(args.size)
    if args.peer:
        from peers import torchvision_fcos

    result = dict(machine_facts(), variant=args.variant, size=list(image_hw), dtype=args.dtype, tiny=args.tiny,
                  batches={})
    name = f"DATE-R50-{args.variant.upper()}" + (" (tiny)" if args.tiny else "")
    rows = []
    for batch in args.batches:
        run, facts = build_date_predict(args.variant, image_hw, batch, args.dtype, args.tiny)
        runners = {"date": run}
        entry: dict[str, Any] = dict(facts)
        if args.peer:
            runners["peer"], peer_facts = torchvision_fcos.build_predict(image_hw, batch, NUM_CLASSES)
            runners["peer"]()
            entry["peer_versions"] = peer_facts
        times = interleaved(runners, args.steps, args.repeats)
        entry["date"] = summarise(times["date"], batch)
        if args.peer:
            entry["peer"] = summarise(times["peer"], batch)
            entry["ratio_date_over_peer"] = entry["date"]["step_s_median"] / entry["peer"]["step_s_median"]
        result["batches"][str(batch)] = entry
        rows.append((batch, entry))
    result["peak_bytes"] = peak_bytes(jax.devices()[0])

    print(f"inference (network + decode) | {result['device']} ({result['backend']}, {result['cpu_cores']} host cores) "
          f"| {image_hw[0]}x{image_hw[1]} {args.dtype} | medians of {args.steps * args.repeats} calls")
    print(f"{'model':28s} {'batch':>5s} {'latency ms':>11s} {'img/s':>8s} {'compile s':>10s} {'XLA est.':>10s} "
          f"{'peer ms':>9s} {'ratio':>6s}")
    for batch, entry in rows:
        d = entry["date"]
        peer_ms = f"{entry['peer']['step_s_median'] * 1e3:9.1f}" if args.peer else f"{'-':>9s}"
        ratio = f"{entry['ratio_date_over_peer']:5.2f}x" if args.peer else f"{'-':>6s}"
        print(f"{name:28s} {batch:5d} {d['step_s_median'] * 1e3:11.1f} {d['images_per_s']:8.2f} "
              f"{entry['compile_s']:10.1f} {fmt_bytes(entry['static_bytes']):>10s} {peer_ms} {ratio}")
    if args.peer:
        print(f"peer: torchvision FCOS-R50-FPN (network + NMS decode), torch {rows[0][1]['peer_versions']['torch']}, "
              f"{rows[0][1]['peer_versions']['threads']} threads; ratio = DATE latency / peer latency")
    write_json(result, args.out)


if __name__ == "__main__":
    runtime.configure(tensorflow=False)   # first: before JAX creates its client
    main()
