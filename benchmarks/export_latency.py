"""Latency of the exported detector (StableHLO via jax.export, SavedModel via TensorFlow) against Detector.predict.

    python benchmarks/export_latency.py [--config configs/demo.py | --workdir W] [--images 8]
        [--repeats 5] [--out benchmarks/results/export_latency.json]

All three paths take the same uint8 originals one at a time and return boxes in original pixels: `Detector.predict`
(test transform, padding to the image's bucket, jitted predict, host rescale), and for each artifact the host
preprocessing of its JSON contract (`export.prepare_images`) plus one call of the loaded artifact (deserialized /
`tf.saved_model.load`ed from files, as a serving client would). The three run interleaved, round by round, in one
process; the figure is the median over rounds of the per-image mean, and the ratios are artifact / in-process.
Without --workdir the config's model gets fresh variables (the decoding's work is fixed-shape top-k either way).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Callable

from date_jax import cpu_memory

if __name__ == "__main__":
    cpu_memory.retain_freed_memory()   # first: before JAX creates its CPU client

import jax  # noqa: E402
import numpy as np  # noqa: E402

from date_jax import (  # noqa: E402
    checkpoints,  # noqa: E402
    cli,
    export,
)
from date_jax.inference import Detector  # noqa: E402
from date_jax.models import detector  # noqa: E402


def load(args: argparse.Namespace) -> tuple[object, dict]:
    """(config, variables) of --workdir, or of --config with fresh variables."""
    if args.workdir:
        config = checkpoints.load_config(args.workdir)
        return config, checkpoints.restore_variables(args.workdir)[1]
    config = cli.load_config_file(args.config)
    model = detector.build_model(config)
    variables = detector.init_variables(model, jax.random.key(0), export.default_input_size(config))
    return config, jax.tree.map(np.asarray, variables)


def test_images(config, count: int) -> list[np.ndarray]:
    """`count` uint8 RGB landscape images 1.5x the test size (the resize is part of every path)."""
    rng = np.random.default_rng(0)
    short, long = 1.5 * int(config.data.test_short_size), 1.5 * int(config.data.max_size)
    sizes = [(int(short * s), int(long)) for s in rng.uniform(0.8, 1.0, count)]
    return [rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8) for sh, sw in sizes]


def timed_round(fn: Callable[[np.ndarray], object], images: list[np.ndarray]) -> float:
    """Mean seconds per image of fn over `images` (results fetched to the host)."""
    start = time.perf_counter()
    for image in images:
        fn(image)
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/export_latency.json")
    args = parser.parse_args()
    import tensorflow as tf

    config, variables = load(args)
    size = export.default_input_size(config)
    images = test_images(config, args.images)
    folder = tempfile.mkdtemp(prefix="export_latency_")
    start = time.perf_counter()
    with open(os.path.join(folder, export.STABLEHLO_FILE), "wb") as f:
        f.write(export.export_stablehlo(config, variables, size, batch=None, platforms=("cpu",)).serialize())
    export.save_savedmodel(config, variables, size, os.path.join(folder, export.SAVEDMODEL_DIR), batch=None,
                           platforms=("cpu",))
    export_s = time.perf_counter() - start

    reference = Detector(config, variables, category_names=[f"class {i}" for i in range(config.model.num_classes)])
    with open(os.path.join(folder, export.STABLEHLO_FILE), "rb") as f:
        stablehlo_call = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
    serve = tf.saved_model.load(os.path.join(folder, export.SAVEDMODEL_DIR)).signatures[export.SIGNATURE]

    def run_stablehlo(image: np.ndarray) -> object:
        inputs = export.prepare_images([image], config, size)
        return jax.device_get(stablehlo_call(inputs["images"], inputs["image_hw"], inputs["original_hw"]))

    def run_savedmodel(image: np.ndarray) -> object:
        inputs = export.prepare_images([image], config, size)
        return {k: v.numpy() for k, v in serve(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    runners = {"detector_predict": lambda image: reference.predict([image]), "stablehlo": run_stablehlo,
               "savedmodel": run_savedmodel}
    for fn in runners.values():        # compile and warm up
        timed_round(fn, images[:2])
    rounds = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            rounds[name].append(timed_round(fn, images))
    ms = {name: 1e3 * statistics.median(times) for name, times in rounds.items()}
    result = dict(config=args.workdir or args.config, input_size=list(size), images=args.images, repeats=args.repeats,
                  export_s=round(export_s, 2), ms_per_image={k: round(v, 2) for k, v in ms.items()},
                  ratio_stablehlo=round(ms["stablehlo"] / ms["detector_predict"], 3),
                  ratio_savedmodel=round(ms["savedmodel"] / ms["detector_predict"], 3),
                  jax=jax.__version__, tensorflow=tf.__version__, cpu_count=os.cpu_count())
    for name, value in ms.items():
        print(f"{name:18s} {value:8.2f} ms/image  (rounds: {', '.join(f'{1e3 * t:.2f}' for t in rounds[name])})")
    print(f"ratio stablehlo / predict {result['ratio_stablehlo']:.3f}, savedmodel / predict "
          f"{result['ratio_savedmodel']:.3f} (export of both took {export_s:.1f} s)")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
