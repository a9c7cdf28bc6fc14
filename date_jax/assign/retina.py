"""RetinaNet one-to-many targets (SPEC §4.4): mmdet MaxIoUAssigner with low-quality matches, delta regression targets."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from date_jax import boxes as box_ops

Array = jax.Array


def retina_targets(anchors: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array, num_classes: int,
                   pos_iou: float = 0.5, neg_iou: float = 0.4, min_pos_iou: float = 0.0,
                   gt_max_assign_all: bool = True) -> dict[str, Array]:
    """Targets of one image: anchors [A, 4], gts [G, 4]/[G]/[G] -> labels [A] (C = background), label_weights [A]
    (0 in the ignore band), deltas [A, 4], positive [A] bool, gt_index [A] (-1 not positive)."""
    num_anchors = anchors.shape[0]
    num_gts = gt_boxes.shape[0]
    if num_gts == 0:
        return dict(labels=jnp.full((num_anchors,), num_classes, jnp.int32), label_weights=jnp.ones((num_anchors,)),
                    deltas=jnp.zeros((num_anchors, 4)), positive=jnp.zeros((num_anchors,), bool),
                    gt_index=jnp.full((num_anchors,), -1, jnp.int32))
    overlaps = jnp.where(gt_mask[None, :], box_ops.pairwise_iou(anchors, gt_boxes), -1.0)       # [A, G]
    max_overlap = jnp.max(overlaps, axis=1)
    best_gt = jnp.argmax(overlaps, axis=1)
    negative = max_overlap < neg_iou
    assigned = jnp.where(max_overlap >= pos_iou, best_gt, -1)
    # Low-quality matches: each gt claims its best anchor(s); a later gt overwrites an earlier one.
    gt_best_overlap = jnp.max(overlaps, axis=0)
    if gt_max_assign_all:
        claims = overlaps == gt_best_overlap[None, :]
    else:
        claims = jnp.arange(num_anchors)[:, None] == jnp.argmax(overlaps, axis=0)[None, :]
    claims &= (gt_mask & (gt_best_overlap >= min_pos_iou))[None, :]
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
