"""Box algebra on xyxy boxes in pixels: areas, (G)IoU, format changes, ltrb distances and the delta coder.

All functions are pure jnp, broadcast over leading axes and are safe under jit/vmap. Conventions follow mmdetection
2.25: width = x2 - x1 (no +1), IoU eps 1e-6 for the pairwise overlaps used in assignment, 1e-7 for the GIoU loss.
"""
from __future__ import annotations

import math

import jax.numpy as jnp

Array = jnp.ndarray

# |ln(16/1000)|: mmdet DeltaXYWHBBoxCoder clamps the decoded log-scale at this magnitude.
DELTA_WH_CLAMP = abs(math.log(16.0 / 1000.0))


def area(boxes: Array) -> Array:
    """Area of xyxy boxes [..., 4] -> [...]; degenerate (inverted) boxes have area 0."""
    w = jnp.clip(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.clip(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def _intersection(a: Array, b: Array) -> Array:
    """Intersection area of broadcast-compatible xyxy boxes [..., 4] -> [...]."""
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0.0)
    return wh[..., 0] * wh[..., 1]


def iou(a: Array, b: Array, eps: float = 1e-6) -> Array:
    """Elementwise IoU of broadcast-compatible xyxy boxes [..., 4] -> [...] (union clamped below by eps)."""
    inter = _intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / jnp.maximum(union, eps)


def pairwise_iou(a: Array, b: Array, eps: float = 1e-6) -> Array:
    """IoU between every box of a [N, 4] and b [M, 4] -> [N, M]."""
    return iou(a[:, None, :], b[None, :, :], eps)


def giou(a: Array, b: Array, eps: float = 1e-7) -> Array:
    """Elementwise generalised IoU of broadcast-compatible xyxy boxes [..., 4] -> [...] in [-1, 1]."""
    inter = _intersection(a, b)
    union = jnp.maximum(area(a) + area(b) - inter, eps)
    enclose_lt = jnp.minimum(a[..., :2], b[..., :2])
    enclose_rb = jnp.maximum(a[..., 2:], b[..., 2:])
    enclose_wh = jnp.clip(enclose_rb - enclose_lt, 0.0)
    enclose = jnp.maximum(enclose_wh[..., 0] * enclose_wh[..., 1], eps)
    return inter / union - (enclose - union) / enclose


def pairwise_giou(a: Array, b: Array, eps: float = 1e-7) -> Array:
    """GIoU between every box of a [N, 4] and b [M, 4] -> [N, M]."""
    return giou(a[:, None, :], b[None, :, :], eps)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """xyxy [..., 4] -> (cx, cy, w, h) [..., 4]."""
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """(cx, cy, w, h) [..., 4] -> xyxy [..., 4]."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def ltrb_to_boxes(points: Array, ltrb: Array) -> Array:
    """Decode distances (l, t, r, b) [..., 4] from points (x, y) [..., 2] into xyxy boxes [..., 4]."""
    return jnp.concatenate([points - ltrb[..., :2], points + ltrb[..., 2:]], axis=-1)


def boxes_to_ltrb(points: Array, boxes: Array) -> Array:
    """Distances (l, t, r, b) [..., 4] from points (x, y) [..., 2] to the sides of xyxy boxes [..., 4]."""
    return jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)


def encode_deltas(anchors: Array, boxes: Array) -> Array:
    """DeltaXYWHBBoxCoder (means 0, stds 1): (dx, dy, dw, dh) [..., 4] of xyxy boxes relative to xyxy anchors."""
    a = xyxy_to_cxcywh(anchors)
    g = xyxy_to_cxcywh(boxes)
    dxy = (g[..., :2] - a[..., :2]) / a[..., 2:]
    dwh = jnp.log(g[..., 2:] / a[..., 2:])
    return jnp.concatenate([dxy, dwh], axis=-1)


def decode_deltas(anchors: Array, deltas: Array) -> Array:
    """Inverse of `encode_deltas` with mmdet's clamp |dw|, |dh| <= ln(1000/16): xyxy boxes [..., 4]."""
    a = xyxy_to_cxcywh(anchors)
    dwh = jnp.clip(deltas[..., 2:], -DELTA_WH_CLAMP, DELTA_WH_CLAMP)
    cxy = a[..., :2] + deltas[..., :2] * a[..., 2:]
    wh = a[..., 2:] * jnp.exp(dwh)
    return cxcywh_to_xyxy(jnp.concatenate([cxy, wh], axis=-1))


def clip_to_image(boxes: Array, image_shape: Array) -> Array:
    """Clip xyxy boxes [..., 4] to an image of (height, width) `image_shape` [..., 2] (broadcast)."""
    h = image_shape[..., 0:1].astype(boxes.dtype)
    w = image_shape[..., 1:2].astype(boxes.dtype)
    x = jnp.clip(boxes[..., 0::2], 0.0, w)
    y = jnp.clip(boxes[..., 1::2], 0.0, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)
