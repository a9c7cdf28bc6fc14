"""FCOS one-to-many targets (docs/spec.md §4.3, vanilla mmdet FCOS): inside-box points, per-level size ranges,
smallest area wins."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from date_jax import boxes as box_ops

Array = jax.Array

AREA_INF = 1e8


def centerness_target(ltrb: Array) -> Array:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of distances [..., 4] -> [...]."""
    left_right = ltrb[..., 0::2]
    top_bottom = ltrb[..., 1::2]
    ratio = (jnp.min(left_right, -1) / jnp.max(left_right, -1)) * (jnp.min(top_bottom, -1) / jnp.max(top_bottom, -1))
    return jnp.sqrt(ratio)


def fcos_targets(points: Array, regress_ranges: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array,
                 num_classes: int) -> dict[str, Array]:
    """Targets of one image: points [N, 2], ranges [N, 2], gts [G, 4]/[G]/[G] -> labels [N] (C = background),
    ltrb [N, 4] pixels, centerness [N], positive [N] bool, gt_index [N] (-1 background)."""
    num_points = points.shape[0]
    if gt_boxes.shape[0] == 0:
        return dict(labels=jnp.full((num_points,), num_classes, jnp.int32), ltrb=jnp.zeros((num_points, 4)),
                    centerness=jnp.zeros((num_points,)), positive=jnp.zeros((num_points,), bool),
                    gt_index=jnp.full((num_points,), -1, jnp.int32))
    ltrb = box_ops.boxes_to_ltrb(points[:, None, :], gt_boxes[None, :, :])                # [N, G, 4]
    inside = jnp.min(ltrb, -1) > 0
    reach = jnp.max(ltrb, -1)
    in_range = (reach >= regress_ranges[:, 0:1]) & (reach <= regress_ranges[:, 1:2])
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    areas = jnp.where(inside & in_range & gt_mask[None, :], areas[None, :], AREA_INF)
    gt_index = jnp.argmin(areas, axis=1)
    positive = jnp.min(areas, axis=1) < AREA_INF
    target = jnp.take_along_axis(ltrb, gt_index[:, None, None], axis=1)[:, 0]
    safe = jnp.where(positive[:, None], target, 1.0)
    return dict(
        labels=jnp.where(positive, gt_labels[gt_index], num_classes).astype(jnp.int32),
        ltrb=jnp.where(positive[:, None], target, 0.0),
        centerness=jnp.where(positive, centerness_target(safe), 0.0),
        positive=positive,
        gt_index=jnp.where(positive, gt_index, -1).astype(jnp.int32),
    )
