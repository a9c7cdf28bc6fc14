"""Input pipeline throughput with the COCO 1x transforms on generated 640x480-ish JPEGs (docs/design.md §5: >= 200
img/s/core).

    python benchmarks/input_pipeline.py [--images 512] [--batches 30] [--repeats 3] [--batch_size 16]
        [--num_parallel_calls -1] [--out benchmarks/results/input_pipeline.json]

Writes (once, under --workdir) a COCO-format set of JPEGs of COCO's common sizes with natural-image-like statistics
(shading, texture, noise, shapes; ~130 KB each; COCO's average is ~160 KB), then times `train_batches` (read,
decode, flip, resize to (1333, 800), pad to a bucket, uint8 batches) after a warm-up. Prints images/s of wall time and
images per CPU-second of the process (user + system, all threads): the latter is the per-core figure, and stays
meaningful on a machine shared with other work. `--repeats` windows of `--batches` batches are timed one after another
(medians reported).
"""
import argparse
import itertools
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw
from train_step import write_json  # benchmarks/train_step.py, beside this script

from date_jax import config as config_lib
from date_jax import runtime
from date_jax.data import pipeline

COCO_SIZES = ((480, 640), (427, 640), (640, 480), (480, 640), (425, 640), (512, 640), (640, 427), (375, 500))


def write_images(root: str, count: int) -> None:
    """`count` JPEGs of COCO's common sizes with a few boxes each, plus their COCO json (kept between runs)."""
    ann_file = os.path.join(root, "annotations", "bench.json")
    if os.path.isfile(ann_file):
        with open(ann_file) as f:
            if len(json.load(f)["images"]) == count:
                return
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        h, w = COCO_SIZES[i % len(COCO_SIZES)]
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        shade = rng.uniform(40, 200, 3) + 60 * np.sin(6 * yy[..., None] + rng.uniform(0, 6, 3)) * xx[..., None]
        texture = np.asarray(Image.fromarray(rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)).resize(
            (w, h), Image.BICUBIC), np.float64)
        pixels = Image.fromarray(np.uint8(np.clip(shade + 0.6 * (texture - 128) + rng.normal(0, 14, (h, w, 3)),
                                                  0, 255)))
        draw = ImageDraw.Draw(pixels)
        for k in range(int(rng.integers(2, 9))):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            bw, bh = int(rng.integers(20, min(300, w - x))), int(rng.integers(20, min(300, h - y)))
            draw.ellipse([x, y, x + bw, y + bh], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=1 + k % 3,
                                    bbox=[x, y, bw, bh], area=bw * bh, iscrowd=0))
        name = f"{i + 1:06d}.jpg"
        pixels.save(os.path.join(root, "images", name), quality=90)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
    with open(ann_file, "w") as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=c, name=f"c{c}") for c in (1, 2, 3)]), f)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_parallel_calls", type=int, default=-1)
    parser.add_argument("--workdir", default="/tmp/date_jax_input_bench")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results", "input_pipeline.json"))
    args = parser.parse_args()
    write_images(args.workdir, args.images)
    sizes = [os.path.getsize(os.path.join(args.workdir, "images", n)) for n in os.listdir(
        os.path.join(args.workdir, "images"))]
    config = config_lib.base_config()
    config.data.update(source="coco", root=args.workdir, train_ann="annotations/bench.json", train_images="images",
                       batch_size=args.batch_size, num_parallel_calls=args.num_parallel_calls)
    batches = pipeline.train_batches(config, process_index=0, process_count=1)
    shapes = {next(batches)["image"].shape for _ in range(3)}          # warm-up: graph tracing, thread pools
    images = args.batches * args.batch_size
    walls, cpus = [], []
    for _ in range(args.repeats):
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for batch in itertools.islice(batches, args.batches):
            shapes.add(batch["image"].shape)
        walls.append(images / (time.perf_counter() - wall0))
        cpus.append(images / (cpu_seconds() - cpu0))
    batches.close()     # stops the thread that builds the next epoch ahead
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"input pipeline, COCO 1x (flip, resize to (1333, 800), pad to /128 buckets), uint8 batches of "
          f"{args.batch_size}; {len(sizes)} JPEGs of ~640x480, mean {np.mean(sizes) / 1024:.0f} KB")
    print(f"  wall: {np.median(walls):.1f} images/s on {cores} cores (num_parallel_calls={args.num_parallel_calls}; "
          f"windows: {', '.join(f'{w:.1f}' for w in walls)})")
    print(f"  cpu:  {np.median(cpus):.1f} images per CPU-second (per core; {1000 / np.median(cpus):.2f} ms CPU per "
          f"image; windows: {', '.join(f'{c:.1f}' for c in cpus)})")
    print(f"  batch shapes seen: {sorted(shapes)}")
    write_json(dict(images_per_s_wall=float(np.median(walls)), images_per_cpu_s=float(np.median(cpus)),
                    windows_wall=walls, windows_cpu=cpus, images_per_window=images, batch_size=args.batch_size,
                    num_parallel_calls=args.num_parallel_calls, cores=cores, jpeg_kb_mean=float(np.mean(sizes)) / 1024,
                    batch_shapes=sorted(shapes)), args.out)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    runtime.configure()   # first: before JAX creates its client (and TensorFlow sees no GPU)
    main()
