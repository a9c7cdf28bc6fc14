"""How often POTO matches a ground truth outside its own centre prior, per image (issue #19, docs/spec.md §4.1 / §D.1).

A ground truth is matched outside its prior when the prior holds no point (a box that contains no point of any level
strictly inside its centre region) or when every point of it serves another ground truth. Both cases are counted with
the real `poto_assign` on random predictions and `matched_outside_prior`; "empty prior" counts the first case alone,
"in another prior" counts matched points that lie inside another ground truth's prior (a positive beside another
object; what the filler-first candidate order avoids).

Sources:
- synthetic: the demo's data (`date_jax.data.synthetic.render_image`, 160 px scenes, the train split's seed), resized
  as the demo does (short side 128, long side <= 160, keep ratio) into its 160 x 160 bucket, max_boxes 20; with
  `--style crowded` the convergence study's set (configs/convergence_crowded.py: same sizes, max_boxes 32).
- coco-like: boxes drawn from an assumed COCO-like distribution (not read from COCO): a landscape 640 x 480 image
  resized by the 1x pipeline (short 800, long <= 1333: x 5/3, 800 x 1067) into its bucket padded to a multiple of
  128; 1 + NegativeBinomial(n=1.5, mean 6.3) objects (mean 7.3 per image, as in COCO train2017, heavy tail, capped
  at max_boxes 100); sqrt(area) in original pixels log-normal with median 42 px and sigma 1.22 (so 41% small < 32^2,
  34% medium, 25% large: COCO's split by instance count); log(w / h) ~ Normal(0, 0.7); centres uniform in the image;
  boxes clipped to it, those narrower or lower than 1 original pixel after clipping dropped.
Predictions: logits ~ Normal(-4, 1) (a fresh head's prior), boxes = point -/+ Uniform(0.5, 4) strides per side.

    python -m benchmarks.empty_prior_rate [--synthetic-images 2000] [--coco-images 200] [--batch 8] [--seed 0]
        [--style shapes|crowded]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from date_jax import priors
from date_jax.assign.poto import centre_prior, matched_outside_prior, poto_assign
from date_jax.data.synthetic import render_image
from date_jax.data.transforms import rescale_size

RADIUS = 1.5
NUM_CLASSES = 4


def synthetic_scenes(num_images: int, seed: int = 0, max_boxes: int = 20,
                     style: str = "shapes") -> tuple[tuple[int, int], list[np.ndarray]]:
    """The synthetic train scenes of `style`: ((bucket h, w), list of resized xyxy boxes [k, 4] per image)."""
    rng = np.random.default_rng([seed, 0])
    scenes = []
    for _ in range(num_images):
        pixels, objects = render_image(rng, 160, style)
        h, w = pixels.shape[:2]
        new_h, new_w = rescale_size(np.array(h), np.array(w), 128, 160)
        xywh = np.asarray([box for box, _ in objects], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) * np.tile([new_w / w, new_h / h], 2)
        scenes.append(boxes[:max_boxes])
    return (160, 160), scenes


def coco_like_scenes(num_images: int, rng: np.random.Generator,
                     max_boxes: int = 100) -> tuple[tuple[int, int], list[np.ndarray]]:
    """Landscape 640 x 480 scenes with COCO-like boxes (see the module docstring), resized to 800 x 1067."""
    scenes = []
    h, w = 480, 640
    new_h, new_w = rescale_size(np.array(h), np.array(w), 800, 1333)
    for _ in range(num_images):
        count = min(1 + rng.negative_binomial(1.5, 1.5 / (1.5 + 6.3)), max_boxes)
        side = np.exp(rng.normal(np.log(42), 1.22, count))
        aspect = np.exp(rng.normal(0, 0.7, count))
        size = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1)
        centre = rng.uniform([0, 0], [w, h], (count, 2))
        boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, [w, h, w, h])
        boxes = boxes[np.all(boxes[:, 2:] - boxes[:, :2] >= 1, axis=1)]
        scenes.append(boxes * np.tile([new_w / w, new_h / h], 2))
    bucket = (priors.padded_size(int(new_h), 128), priors.padded_size(int(new_w), 128))
    return bucket, scenes


def count_fn(grid: priors.PointGrid):
    """jit: (logits [B,N,C], pred [B,N,4], gts [B,G,4], labels [B,G], mask [B,G]) -> per-image counts [B, 4]:
    valid gts, empty priors, matched outside own prior, matched inside another valid gt's prior."""
    points, strides = jnp.asarray(grid.points), jnp.asarray(grid.strides)

    def one(logits, pred, gts, labels, mask):
        gt_to_point, _ = poto_assign(logits, pred, gts, labels, mask, grid, radius=RADIUS)
        prior = centre_prior(points[:, None, :], strides[:, None], gts[None, :, :], RADIUS) & mask[None, :]   # [N, G]
        empty = mask & ~jnp.any(prior, axis=0)
        outside = matched_outside_prior(gt_to_point, gts, mask, grid, RADIUS)
        at_point = prior[jnp.maximum(gt_to_point, 0)]                                                 # [G, G]
        others = at_point & ~jnp.eye(gts.shape[0], dtype=bool)
        in_other = mask & (gt_to_point >= 0) & ~jnp.diagonal(at_point) & jnp.any(others, axis=1)
        return jnp.stack([jnp.sum(mask), jnp.sum(empty), jnp.sum(outside), jnp.sum(in_other)])
    return jax.jit(jax.vmap(one))


def measure(name: str, bucket: tuple[int, int], scenes: list[np.ndarray], batch: int, rng: np.random.Generator,
            max_boxes: int) -> None:
    """Run POTO on every scene (random predictions) and print the per-image rates."""
    grid = priors.point_grid(bucket)
    fn = count_fn(grid)
    n = grid.num_points
    counts = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start:start + batch]
        gts = np.zeros((batch, max_boxes, 4), np.float32)
        mask = np.zeros((batch, max_boxes), bool)
        for b, boxes in enumerate(chunk):
            gts[b, :len(boxes)] = boxes
            mask[b, :len(boxes)] = True
        labels = rng.integers(0, NUM_CLASSES, (batch, max_boxes)).astype(np.int32)
        logits = rng.normal(-4, 1, (batch, n, NUM_CLASSES)).astype(np.float32)
        extent = rng.uniform(0.5, 4, (batch, n, 4)) * np.tile(grid.strides[None, :, None], (1, 1, 4))
        pred = np.concatenate([grid.points - extent[..., :2], grid.points + extent[..., 2:]], -1).astype(np.float32)
        counts.append(np.asarray(fn(logits, pred, gts, labels, mask))[:len(chunk)])
    counts = np.concatenate(counts)
    images = len(counts)
    gts, empty, outside, in_other = counts.T
    print(f"{name}: {images} images, bucket {bucket[0]}x{bucket[1]} ({n} points), {gts.mean():.2f} gts/image")
    for label, values in (("empty prior", empty), ("matched outside own prior", outside),
                          ("matched inside another gt's prior", in_other)):
        print(f"  {label:34s} {values.mean():.4f} per image, {values.sum() / max(gts.sum(), 1):.4%} of gts, "
              f"{np.mean(values > 0):.2%} of images >= 1, max {values.max()}")


def main() -> None:
    """Parse the flags and print the rates of both sources."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-images", type=int, default=2000)
    parser.add_argument("--coco-images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=("shapes", "crowded"), default="shapes", help="Synthetic set's style.")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.synthetic_images:
        max_boxes = 32 if args.style == "crowded" else 20
        bucket, scenes = synthetic_scenes(args.synthetic_images, max_boxes=max_boxes, style=args.style)
        measure(f"synthetic ({args.style} train split)", bucket, scenes, args.batch, rng, max_boxes=max_boxes)
    if args.coco_images:
        bucket, scenes = coco_like_scenes(args.coco_images, rng)
        measure("coco-like (assumed distribution)", bucket, scenes, args.batch, rng, max_boxes=100)


if __name__ == "__main__":
    main()
