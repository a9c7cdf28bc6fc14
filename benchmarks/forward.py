"""Forward-pass benchmark of DATE-R50-F: parameter count, compile time and steady-state time per batch.

Run from the repository root:  python3 benchmarks/forward.py [--height 800 --width 1344 --batch 1 --iters 5]
Prints a table and writes the figures as JSON to --out (default benchmarks/results/forward.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from date_jax import config as config_lib
from date_jax import runtime
from date_jax.models import detector


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="timed steady-state forwards")
    parser.add_argument("--dtype", default="float32", choices=sorted(detector.DTYPES))
    parser.add_argument("--depth", type=int, default=50, choices=(50, 101))
    parser.add_argument("--o2o", default="point", choices=("point", "3dmf"))
    parser.add_argument("--o2m", default="fcos", choices=("fcos", "retina", "none"))
    parser.add_argument("--out", default="benchmarks/results/forward.json")
    return parser.parse_args(argv)


def count(tree) -> int:
    """Number of scalars in a pytree of arrays or shape structs."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def run(args: argparse.Namespace) -> dict:
    """Build the model, compile its jitted forward, time it; returns the figures."""
    config = config_lib.base_config()
    config.dtype = args.dtype
    config.model.backbone.depth = args.depth
    config.model.o2o, config.model.o2m = args.o2o, args.o2m
    model = detector.build_model(config, runtime.conv_op())
    # Parameter shapes do not depend on the image size: initialise on a small image.
    variables = detector.init_variables(model, jax.random.key(0), (128, 128))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (args.batch, args.height, args.width, 3)),
                         jnp.uint8)
    forward = jax.jit(model.apply, compiler_options=runtime.compiler_options())

    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(variables, images))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(variables, images))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    variant = f"DATE-R{args.depth}-{'F' if args.o2m == 'fcos' else 'R' if args.o2m == 'retina' else 'O2O'}"
    return {
        "model": variant + ("-3DMF" if args.o2o == "3dmf" else ""),
        "image_hw": [args.height, args.width], "batch": args.batch, "dtype": args.dtype,
        "params_trainable": count(variables["params"]), "batch_stats": count(variables["batch_stats"]),
        "params_total": count(variables),
        "compile_s": round(compile_s, 3), "first_call_s": round(first_s, 3),
        "forward_median_s": round(median, 4), "forward_min_s": round(min(times), 4),
        "forward_mean_s": round(statistics.mean(times), 4), "iters": args.iters,
        "images_per_s": round(args.batch / median, 3),
        "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    """Run, print a table, write JSON."""
    args = parse_args(argv)
    result = run(args)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    runtime.configure(tensorflow=False)   # first: before JAX creates its client
    main()
