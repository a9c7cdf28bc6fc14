"""POTO assignment speed: jitted on-device quality + exact matching vs the reference (numpy N x G quality + scipy).

B images of 800x1344 (22,400 points), 80 classes, G ground truths each. The device side is the whole per-batch POTO
driver (`date_jax.assign.targets.o2o_assign`); the reference builds the full quality matrix in numpy (float32, -1
outside the centre prior) and calls `scipy.optimize.linear_sum_assignment(maximize=True)` image by image, as the
PyTorch implementation does on the host. Both run in the same process on the same inputs; steady state (after one
warm-up / compile), median of `--repeats`. Optimal totals are compared for every image.

    python benchmarks/matching.py [--batch 8] [--gts 7 30 100] [--max-boxes 0] [--out benchmarks/results/matching.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
import scipy.optimize

from date_jax import priors
from date_jax.assign.poto import poto_assign
from date_jax.config import assign_config

IMAGE_HW = (800, 1344)
NUM_CLASSES = 80


def make_batch(rng: np.random.Generator, grid: priors.PointGrid, batch: int, num_gts: int, max_boxes: int) -> dict:
    """COCO-like scenes: gts of 8-600 px, predictions near gts, degenerate (zero width) or random; logits ~ N(-4, 2)."""
    n = grid.num_points
    h, w = 800, 1333
    size = np.exp(rng.uniform(np.log(8), np.log(600), (batch, max_boxes, 2)))
    centre = rng.uniform([0, 0], [w, h], (batch, max_boxes, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], -1), 0, [w, h, w, h]).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, max_boxes)).astype(np.int32)
    mask = np.broadcast_to(np.arange(max_boxes) < num_gts, (batch, max_boxes)).copy()
    near = np.take_along_axis(boxes, rng.integers(0, num_gts, (batch, n, 1)), axis=1)
    jitter = rng.normal(0, 0.2, (batch, n, 4)) * np.tile(near[..., 2:] - near[..., :2], 2)
    degenerate = np.concatenate([grid.points, grid.points + [0.0, 20.0]], -1)
    random_boxes = np.concatenate([grid.points - rng.uniform(0, 200, (n, 2)),
                                   grid.points + rng.uniform(0, 200, (n, 2))], -1)
    kind = rng.integers(0, 3, (batch, n, 1))
    pred = np.where(kind == 0, near + jitter, np.where(kind == 1, degenerate, random_boxes)).astype(np.float32)
    logits = rng.normal(-4, 2, (batch, n, NUM_CLASSES)).astype(np.float32)
    return dict(logits=logits, pred=pred, boxes=boxes, labels=labels, mask=mask,
                image_shape=np.tile(np.array([[h, w]], np.int32), (batch, 1)))


def reference_quality(grid: priors.PointGrid, logits: np.ndarray, pred: np.ndarray, gts: np.ndarray,
                      labels: np.ndarray, alpha: float = 0.8, radius: float = 1.5) -> np.ndarray:
    """The reference's [N, G] quality of one image in numpy float32 (-1 outside the centre prior)."""
    prob = 1.0 / (1.0 + np.exp(-logits[:, labels]))
    lt = np.maximum(pred[:, None, :2], gts[None, :, :2])
    rb = np.minimum(pred[:, None, 2:], gts[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area_p = np.prod(np.clip(pred[:, 2:] - pred[:, :2], 0, None), -1)
    area_g = np.prod(gts[:, 2:] - gts[:, :2], -1)
    iou = inter / np.maximum(area_p[:, None] + area_g[None] - inter, 1e-6)
    centre = (gts[:, :2] + gts[:, 2:]) / 2
    half = radius * grid.strides[:, None, None]
    low = np.maximum(centre[None] - half, gts[None, :, :2])
    high = np.minimum(centre[None] + half, gts[None, :, 2:])
    inside = np.all((grid.points[:, None] > low) & (grid.points[:, None] < high), -1)
    return np.where(inside, prob ** (1 - alpha) * iou ** alpha, -1.0).astype(np.float32)


def reference_assign(grid: priors.PointGrid, data: dict, num_gts: int) -> tuple[list, list]:
    """Per image: numpy quality matrix, then scipy; returns the matched points and the full matrices."""
    matches, matrices = [], []
    for b in range(data["logits"].shape[0]):
        quality = reference_quality(grid, data["logits"][b], data["pred"][b], data["boxes"][b, :num_gts],
                                    data["labels"][b, :num_gts])
        rows, cols = scipy.optimize.linear_sum_assignment(quality, maximize=True)
        matches.append((rows, cols))
        matrices.append(quality)
    return matches, matrices


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gts", type=int, nargs="+", default=[7, 30, 100])
    parser.add_argument("--max-boxes", type=int, default=0, help="static gt slots (0: exactly G, no padding)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/matching.json")
    args = parser.parse_args()

    grid = priors.point_grid(IMAGE_HW)
    config = assign_config()
    rng = np.random.default_rng(0)
    rows = []
    for num_gts in args.gts:
        max_boxes = max(args.max_boxes, num_gts)
        data = make_batch(rng, grid, args.batch, num_gts, max_boxes)
        device = {k: jax.device_put(v) for k, v in data.items()}
        assign = jax.jit(jax.vmap(functools.partial(poto_assign, grid=grid, alpha=config.poto_alpha,
                                                    radius=config.center_radius)))
        start = time.perf_counter()
        args = tuple(device[k] for k in ("logits", "pred", "boxes", "labels", "mask"))
        gt_to_point, _ = jax.block_until_ready(assign(*args))
        compile_s = time.perf_counter() - start
        device_s = timed(functools.partial(lambda f, a: jax.block_until_ready(f(*a)), assign, args), args.repeats)
        reference_s = timed(functools.partial(reference_assign, grid, data, num_gts), args.repeats)

        matches, matrices = reference_assign(grid, data, num_gts)
        gt_to_point = np.asarray(gt_to_point)
        worst_gap = 0.0
        for b, ((ref_rows, ref_cols), quality) in enumerate(zip(matches, matrices)):
            ours = quality[gt_to_point[b, :num_gts], np.arange(num_gts)].sum(dtype=np.float64)
            worst_gap = max(worst_gap, abs(ours - quality[ref_rows, ref_cols].sum(dtype=np.float64)))
        rows.append(dict(num_gts=num_gts, max_boxes=max_boxes, batch=args.batch, num_points=grid.num_points,
                         device_s=device_s, reference_s=reference_s, ratio=device_s / reference_s,
                         compile_s=compile_s, max_total_gap=worst_gap))

    print(f"POTO assignment, B={args.batch}, {IMAGE_HW[0]}x{IMAGE_HW[1]} ({grid.num_points} points), "
          f"{NUM_CLASSES} classes, {jax.default_backend()} x{jax.device_count()}, {os.cpu_count()} CPUs")
    print(f"{'G':>5} {'slots':>6} {'jax ms':>10} {'reference ms':>13} {'ratio':>7} {'compile s':>10} {'total gap':>10}")
    for r in rows:
        print(f"{r['num_gts']:>5} {r['max_boxes']:>6} {r['device_s'] * 1e3:>10.1f} {r['reference_s'] * 1e3:>13.1f} "
              f"{r['ratio']:>7.3f} {r['compile_s']:>10.1f} {r['max_total_gap']:>10.2e}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                                   jax=jax.__version__, backend=jax.default_backend(), rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
