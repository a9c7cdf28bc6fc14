"""POTO: prediction-aware one-to-one assignment (docs/spec.md §4.1 with the -1 prior of docs/spec.md §D.1), solved
exactly in jit.

Quality of point n for ground truth g: q[n, g] = p^(1 - alpha) * IoU(pred_n, gt_g)^alpha with p = sigmoid(z[n, label_g])
when n lies strictly inside the centre prior of g (the box [c - r*s, c + r*s] of its level's stride s intersected with
the gt box, on every level), and q[n, g] = -1 otherwise. The assignment maximises the total quality, one point per
valid ground truth.

Exact reduction (why solving on a few candidate points gives an optimum of the full N x G problem).
(1) Top-G lemma. Let T_g be any G points whose qualities for g are >= the quality for g of every point outside T_g.
    Take an optimal matching in which some g is matched to a point n outside T_g. The other G - 1 ground truths occupy
    at most G - 1 points, so some n' in T_g is free; moving g to n' changes the total by q[n', g] - q[n, g] >= 0.
    Each move lowers the number of ground truths matched outside their T_g, so an optimal matching exists inside
    U = union T_g.
(2) Where T_g lives. Strides are powers of two, so a = cx / s is exact in floating point, and so are r s (2 r is an
    integer) and the point coordinates x = (j + 0.5) s. With f = floor(a), the prior needs x > fl(cx - r s) and
    x < fl(cx + r s); as f s <= cx < (f + 1) s and rounding is monotone, fl(cx - r s) >= (f - r) s and
    fl(cx + r s) <= (f + 1 + r) s, so only j - f in [floor(-r - 0.5) + 1, ceil(r + 0.5) - 1] can qualify ({-1, 0, 1}
    for r = 1.5), and the same for rows. So every prior point of g is in its window (3 x 3 points per level, W = 9 L
    for r = 1.5). All prior points score >= 0 > -1, hence the min(G, W) best window points followed by any points
    outside the prior form a valid T_g. The candidate list is therefore: a filler of the min(G, N) lowest-index points
    (which supply the -1 points a T_g may need: |filler minus prior_g| >= G - |prior_g|), then every ground truth's
    min(G, W) best window points. The order of the list does not change the candidate set, hence not (1).
    Repeated points in the list are handled by `matching.assign_on_candidates`.
(3) Which -1 point. A ground truth whose prior holds no free point (a box too small to hold one, or a prior whose
    points all serve others) is matched outside its prior, at quality -1 on every free point: all of them are optimal.
    scipy's `linear_sum_assignment` on the full matrix (the reference) gives a ground truth with an empty prior the
    lowest-index point that is free when it is solved (its search takes the lowest free column among equal reduced
    costs), usually the top-left P3 location, background. The solver here prefers a free column, then the lowest
    column, among equal reduced costs; with the filler first and in point order, the lowest free candidate column is
    the lowest-index free point (at most G - 1 of the points 0..G-1 are taken, so that point is in the filler). Listing
    the windows first would instead put such a ground truth on a free window point of another ground truth: a positive
    beside another object, with this one's class and box. A ground truth pushed out of its prior by a later one also
    gets the lowest free point here; scipy may give it a higher free point (its search reorders the columns it has
    visited), an equally optimal choice.
The restricted matrix is exactly a sub-matrix of the full one: by (2) the only entries >= 0 of column g are at
points of g's window, whose qualities are already computed from the full definition; every other entry is -1. So the
window qualities are scattered to the candidates' columns over a matrix of -1 (no quality is recomputed).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from date_jax import boxes as box_ops
from date_jax import priors
from date_jax.assign.matching import assign_on_candidates, first_slots, matching_inputs, unmatched

Array = jax.Array


def centre_prior(points: Array, strides: Array, gt_boxes: Array, radius: float) -> Array:
    """Point strictly inside the centre region of a gt: points [..., 2], strides [...], boxes [..., 4] -> [...] bool."""
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    half = radius * strides[..., None]
    low = jnp.maximum(centre - half, gt_boxes[..., :2])
    high = jnp.minimum(centre + half, gt_boxes[..., 2:])
    return jnp.all((points > low) & (points < high), axis=-1)


def poto_quality(points: Array, strides: Array, pred_boxes: Array, cls_logit: Array, gt_boxes: Array,
                 alpha: float, radius: float) -> Array:
    """Quality of broadcast (point, gt) pairs: sigmoid(z)^(1-alpha) * IoU^alpha inside the centre prior, else -1."""
    prob = jax.nn.sigmoid(cls_logit)
    overlap = box_ops.iou(pred_boxes, gt_boxes)
    quality = jnp.power(prob, 1.0 - alpha) * jnp.power(overlap, alpha)
    return jnp.where(centre_prior(points, strides, gt_boxes, radius), quality, -1.0)


def _window_steps(radius: float) -> np.ndarray:
    """Cell offsets d (per axis) from floor(centre / stride) that can hold a point strictly within radius strides."""
    if radius <= 0 or not float(2 * radius).is_integer():
        raise ValueError(f"POTO's exact candidate window needs a centre radius that is a positive multiple of 0.5, "
                         f"got {radius} (config.assign.center_radius).")
    return np.arange(math.floor(-radius - 0.5) + 1, math.ceil(radius + 0.5))


def _window_candidates(grid: priors.PointGrid, gt_boxes: Array, radius: float) -> Array:
    """Ids of the points around each gt centre that may lie in its prior (clipped into the grid): [G, W] int32."""
    offsets = np.concatenate([[0], np.cumsum([h * w for h, w in grid.shapes])[:-1]])
    level_strides = [int(s) for s in np.unique(grid.strides)]
    for stride in level_strides:
        if stride & (stride - 1):
            raise ValueError(f"POTO's exact candidate window needs power-of-two strides, got {level_strides} "
                             "(config.model.strides).")
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    steps = jnp.asarray(_window_steps(radius))
    ids = []
    for level, (h, w) in enumerate(grid.shapes):
        stride = float(grid.strides[offsets[level]])
        cell = jnp.floor(centre / stride).astype(jnp.int32)
        cols = jnp.clip(cell[:, 0:1] + steps, 0, w - 1)
        rows = jnp.clip(cell[:, 1:2] + steps, 0, h - 1)
        ids.append((offsets[level] + rows[:, :, None] * w + cols[:, None, :]).reshape(len(gt_boxes), -1))
    return jnp.concatenate(ids, axis=1)


def poto_assign(cls_logits: Array, pred_boxes: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array,
                grid: priors.PointGrid, alpha: float = 0.8, radius: float = 1.5) -> tuple[Array, Array]:
    """POTO for one image: logits [N, C], pred xyxy [N, 4], gts [G, 4]/[G]/[G] -> (gt_to_point [G], point_to_gt [N])."""
    cls_logits, pred_boxes, labels = matching_inputs(cls_logits, pred_boxes, gt_labels)
    num_points, num_gts = cls_logits.shape[0], gt_boxes.shape[0]
    if num_gts == 0:
        return unmatched(num_points)
    points = jnp.asarray(grid.points)
    strides = jnp.asarray(grid.strides)

    window = _window_candidates(grid, gt_boxes, radius)                                       # [G, W]
    window_quality = poto_quality(points[window], strides[window], pred_boxes[window],
                                  cls_logits[window, labels[:, None]], gt_boxes[:, None, :], alpha, radius)
    keep = min(num_gts, window.shape[1])
    chosen = window
    if keep < window.shape[1]:
        _, best = jax.lax.top_k(window_quality, keep)
        chosen = jnp.take_along_axis(window, best, axis=1)
    filler = jnp.arange(min(num_gts, num_points), dtype=chosen.dtype)
    candidates = jnp.concatenate([filler, chosen.reshape(-1)])       # [K]; filler first: docstring (3)

    # Quality of every (gt, candidate) pair: a prior point of g lies in g's window, so the window qualities are
    # the only entries >= 0 of column g; everything else is -1. Scatter them to the candidate slots.
    slots = first_slots(candidates, num_points)
    columns = jnp.where(window_quality >= 0, slots[window], candidates.shape[0])
    gt_rows = jnp.broadcast_to(jnp.arange(num_gts)[:, None], window.shape)
    quality = jnp.full((num_gts, candidates.shape[0]), -1.0, window_quality.dtype)
    quality = quality.at[gt_rows, columns].set(window_quality, mode="drop")
    return assign_on_candidates(-quality, candidates, gt_mask, num_points)


def matched_outside_prior(gt_to_point: Array, gt_boxes: Array, gt_mask: Array, grid: priors.PointGrid,
                          radius: float) -> Array:
    """Valid gts whose one-to-one point lies outside their own centre prior: gt_to_point [..., G] (-1 unmatched),
    gt_boxes [..., G, 4], gt_mask [..., G] -> bool [..., G] (unmatched gts are not counted)."""
    point = jnp.maximum(gt_to_point, 0)
    inside = centre_prior(jnp.asarray(grid.points)[point], jnp.asarray(grid.strides)[point], gt_boxes, radius)
    return gt_mask & (gt_to_point >= 0) & ~inside
