"""RetinaNet one-to-many targets (docs/spec.md §4.4): mmdet MaxIoUAssigner with low-quality matches, delta regression
targets.

Only the anchors inside an image's own padded shape take part, as in mmdet: each image is padded to a multiple of 32
(its `pad_shape`) and the anchor generator's valid flags keep, per level of stride s, the locations (i, j) with
i < ceil(pad_h / s) and j < ceil(pad_w / s); with `allowed_border=-1` nothing else is filtered. The other anchors of the
(larger) bucket are not assigned at all: background label, classification and box weight 0, never positive, so they
are not counted in the loss normaliser either.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from date_jax import boxes as box_ops

Array = jax.Array


def valid_anchors(image_shape: Array, level_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                  anchors_per_location: int, pad_divisor: int = 32) -> Array:
    """mmdet anchor valid flags of one image: image_shape [2] int (unpadded resized h, w), the bucket's per-level
    (h, w) -> bool [A] in `priors.anchors` order (location-major, then anchor)."""
    padded = -(-jnp.asarray(image_shape, jnp.int32) // pad_divisor) * pad_divisor
    flags = []
    for (h, w), stride in zip(level_shapes, strides):
        rows = jnp.arange(h) < -(-padded[0] // stride)
        cols = jnp.arange(w) < -(-padded[1] // stride)
        flags.append(jnp.repeat((rows[:, None] & cols[None, :]).reshape(-1), anchors_per_location))
    return jnp.concatenate(flags)


def retina_targets(anchors: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array, valid: Array, num_classes: int,
                   pos_iou: float = 0.5, neg_iou: float = 0.4, min_pos_iou: float = 0.0,
                   gt_max_assign_all: bool = True) -> dict[str, Array]:
    """Targets of one image: anchors [A, 4], gts [G, 4]/[G]/[G], valid anchors [A] -> labels [A] (C = background),
    label_weights [A] (0 in the ignore band and off `valid`), deltas [A, 4], positive [A] bool, gt_index [A] (-1 not
    positive)."""
    num_anchors = anchors.shape[0]
    num_gts = gt_boxes.shape[0]
    if num_gts == 0:
        return dict(labels=jnp.full((num_anchors,), num_classes, jnp.int32), label_weights=valid.astype(jnp.float32),
                    deltas=jnp.zeros((num_anchors, 4)), positive=jnp.zeros((num_anchors,), bool),
                    gt_index=jnp.full((num_anchors,), -1, jnp.int32))
    pairs = valid[:, None] & gt_mask[None, :]
    overlaps = jnp.where(pairs, box_ops.pairwise_iou(anchors, gt_boxes), -1.0)                 # [A, G]
    max_overlap = jnp.max(overlaps, axis=1)
    best_gt = jnp.argmax(overlaps, axis=1)
    negative = valid & (max_overlap < neg_iou)
    assigned = jnp.where(max_overlap >= pos_iou, best_gt, -1)
    # Low-quality matches: each gt claims its best valid anchor(s); a later gt overwrites an earlier one.
    gt_best_overlap = jnp.max(overlaps, axis=0)
    if gt_max_assign_all:
        claims = overlaps == gt_best_overlap[None, :]
    else:
        claims = jnp.arange(num_anchors)[:, None] == jnp.argmax(overlaps, axis=0)[None, :]
    claims &= pairs & (gt_best_overlap >= min_pos_iou)[None, :]
    last_claim = num_gts - 1 - jnp.argmax(claims[:, ::-1], axis=1)
    assigned = jnp.where(jnp.any(claims, axis=1), last_claim, assigned)
    positive = assigned >= 0
    gt_index = jnp.maximum(assigned, 0)
    matched_boxes = jnp.where(positive[:, None], gt_boxes[gt_index], anchors)
    return dict(
        labels=jnp.where(positive, gt_labels[gt_index], num_classes).astype(jnp.int32),
        label_weights=(positive | negative).astype(jnp.float32),
        deltas=jnp.where(positive[:, None], box_ops.encode_deltas(anchors, matched_boxes), 0.0),
        positive=positive,
        gt_index=assigned.astype(jnp.int32),
    )
