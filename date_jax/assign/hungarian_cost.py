"""DETR-style one-to-one assignment used on CrowdHuman (docs/spec.md §4.2): focal + L1 + GIoU cost, no spatial prior.

C[n, g] = w_cls * (FL+(p) - FL-(p)) + w_l1 * |cxcywh(pred_n / [W, H]) - cxcywh(gt_g / [W, H])|_1 - w_giou *
GIoU(pred_n, gt_g)
with p = sigmoid(z[n, label_g]), FL+ = -a (1 - p)^gamma ln(p + 1e-12), FL- = -(1 - a) p^gamma ln(1 - p + 1e-12),
and (H, W) the unpadded image size. The cost is minimised over all points.

Exact reduction: by the top-G lemma (see `poto.py`), each ground truth's G cheapest points contain an optimal
matching, so when G * G < N the problem is solved on those G * G candidates (repeats handled by
`matching.assign_on_candidates`); otherwise on all N points.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from date_jax import boxes as box_ops
from date_jax.assign.matching import assign_on_candidates, matching_inputs, unmatched

Array = jax.Array


def hungarian_cost(cls_logit: Array, pred_boxes: Array, gt_boxes: Array, image_shape: Array,
                   cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                   focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Array:
    """Cost of broadcast (point, gt) pairs: logit of the gt's class [...], pred/gt xyxy [..., 4], image (h, w) [2]."""
    prob = jax.nn.sigmoid(cls_logit)
    positive = -focal_alpha * (1 - prob) ** focal_gamma * jnp.log(prob + 1e-12)
    negative = -(1 - focal_alpha) * prob ** focal_gamma * jnp.log(1 - prob + 1e-12)
    scale = jnp.stack([image_shape[1], image_shape[0], image_shape[1], image_shape[0]]).astype(pred_boxes.dtype)
    l1 = jnp.sum(jnp.abs(box_ops.xyxy_to_cxcywh(pred_boxes / scale) - box_ops.xyxy_to_cxcywh(gt_boxes / scale)), -1)
    return cls_weight * (positive - negative) + l1_weight * l1 - giou_weight * box_ops.giou(pred_boxes, gt_boxes)


def hungarian_assign(cls_logits: Array, pred_boxes: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array,
                     image_shape: Array, **cost_kwargs: float) -> tuple[Array, Array]:
    """DETR-style matching for one image: logits [N, C], pred [N, 4], gts [G, ...] -> (gt_to_point [G], point_to_gt
    [N])."""
    cls_logits, pred_boxes, labels = matching_inputs(cls_logits, pred_boxes, gt_labels)
    num_points, num_gts = cls_logits.shape[0], gt_boxes.shape[0]
    if num_gts == 0:
        return unmatched(num_points)
    cost = hungarian_cost(cls_logits.T[labels], pred_boxes[None], gt_boxes[:, None, :], image_shape,
                          **cost_kwargs)                                                  # [G, N]
    if num_gts * num_gts >= num_points:
        return assign_on_candidates(cost, jnp.arange(num_points, dtype=jnp.int32), gt_mask, num_points)
    _, cheapest = jax.lax.top_k(-cost, num_gts)                                           # [G, G]
    candidates = cheapest.reshape(-1).astype(jnp.int32)
    return assign_on_candidates(cost[:, candidates], candidates, gt_mask, num_points)
