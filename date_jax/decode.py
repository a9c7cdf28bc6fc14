"""Turning network outputs into detections on device (docs/spec.md §6), with static shapes and a validity mask.

The one-to-one branch is decoded without NMS: per level keep the (point, class) pairs scoring above `score_thr`, the top
`nms_pre` of them, decode their boxes from the point grid, clip to the unpadded image, then keep the top `max_per_img`
of all levels. The FCOS baseline (`model.o2o == 'none'`, `test.nms = True`) decodes the one-to-many branch as mmdet's
FCOSHead does: the same per-level filter on the class score, score x centerness, per-class greedy NMS (`test.nms`),
top `max_per_img`.

Every function works on a batch and returns fixed-size arrays: `boxes` [B, K, 4] xyxy in pixels of the resized image,
`scores` [B, K], `labels` [B, K] int32, `valid` [B, K] bool (K = max_per_img). Rescaling to the original image is a
host-side division by the resize scale (`rescale_boxes`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from date_jax import boxes as box_ops
from date_jax import priors
from date_jax.models.head import o2o_scores

Array = jnp.ndarray
Detections = dict[str, Array]


def _level_bounds(image_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) point indices of every level for a padded input of `image_hw`."""
    bounds, start = [], 0
    for h, w in priors.level_shapes(image_hw, strides):
        bounds.append((start, start + h * w))
        start += h * w
    return bounds


def _top_k_padded(scores: Array, k: int) -> tuple[Array, Array]:
    """`lax.top_k` over the last axis [..., M] that pads with (-inf, 0) when M < k: ([..., k], [..., k])."""
    m = scores.shape[-1]
    if m >= k:
        return jax.lax.top_k(scores, k)
    values, indices = jax.lax.top_k(scores, m)
    pad = [(0, 0)] * (scores.ndim - 1) + [(0, k - m)]
    return jnp.pad(values, pad, constant_values=-jnp.inf), jnp.pad(indices, pad)


def _per_level_candidates(scores: Array, ltrb: Array, image_hw: Sequence[int], strides: Sequence[int],
                          score_thr: float, nms_pre: int) -> tuple[Array, Array, Array, Array]:
    """Per level, the top `nms_pre` (point, class) pairs above `score_thr`, levels concatenated.

    scores [B, N, C], ltrb [B, N, 4] -> (scores [B, M], boxes [B, M, 4] unclipped, labels [B, M], points [B, M]);
    pairs at or below the threshold score -inf.
    """
    num_classes = scores.shape[-1]
    points = jnp.asarray(priors.point_grid(image_hw, strides).points)
    if scores.shape[1] != points.shape[0]:
        raise ValueError(f"network output has {scores.shape[1]} points but a {tuple(image_hw)} input with strides "
                         f"{tuple(strides)} has {points.shape[0]}: the config's model.strides must match the model")
    out_scores, out_boxes, out_labels, out_points = [], [], [], []
    for start, stop in _level_bounds(image_hw, strides):
        flat = scores[:, start:stop, :].reshape(scores.shape[0], -1)
        flat = jnp.where(flat > score_thr, flat, -jnp.inf)
        k = flat.shape[1] if nms_pre <= 0 else min(nms_pre, flat.shape[1])
        top_scores, top_index = jax.lax.top_k(flat, k)
        point_index = start + top_index // num_classes
        level_ltrb = jnp.take_along_axis(ltrb, point_index[..., None], axis=1)
        out_boxes.append(box_ops.ltrb_to_boxes(points[point_index], level_ltrb.astype(jnp.float32)))
        out_scores.append(top_scores)
        out_labels.append((top_index % num_classes).astype(jnp.int32))
        out_points.append(point_index)
    return (jnp.concatenate(out_scores, 1), jnp.concatenate(out_boxes, 1), jnp.concatenate(out_labels, 1),
            jnp.concatenate(out_points, 1))


def _select(cand_scores: Array, cand_boxes: Array, cand_labels: Array, max_per_img: int,
            iou_threshold: float | None) -> Detections:
    """Optional per-class NMS, then the top `max_per_img` candidates [B, M] of every image as fixed-size detections."""
    if iou_threshold is not None:
        keep = jax.vmap(greedy_nms, in_axes=(0, 0, 0, None))(cand_boxes, cand_scores, cand_labels, iou_threshold)
        cand_scores = jnp.where(keep, cand_scores, -jnp.inf)
    top_scores, order = _top_k_padded(cand_scores, max_per_img)
    return dict(boxes=jnp.take_along_axis(cand_boxes, order[..., None], axis=1),
                scores=jnp.where(jnp.isfinite(top_scores), top_scores, 0.0),
                labels=jnp.take_along_axis(cand_labels, order, axis=1),
                valid=jnp.isfinite(top_scores))


def decode_o2o(logits: Array, ltrb: Array, image_shape: Array, *, image_hw: Sequence[int],
               strides: Sequence[int] = priors.STRIDES, score_thr: float = 0.01, nms_pre: int = 100,
               max_per_img: int = 100, filter_logits: Array | None = None,
               iou_threshold: float | None = None) -> Detections:
    """Decode the one-to-one branch: logits [B, N, C], ltrb [B, N, 4], image_shape [B, 2] -> K = max_per_img.

    No NMS unless `iou_threshold` is given (an ablation; the released models never use it).
    """
    scores = o2o_scores(logits, filter_logits)
    cand_scores, cand_boxes, cand_labels, _ = _per_level_candidates(scores, ltrb, image_hw, strides, score_thr,
                                                                    nms_pre)
    cand_boxes = box_ops.clip_to_image(cand_boxes, image_shape[:, None, :])
    return _select(cand_scores, cand_boxes, cand_labels, max_per_img, iou_threshold)


def greedy_nms(boxes: Array, scores: Array, labels: Array, iou_threshold: float) -> Array:
    """Per-class greedy NMS of one image: boxes [M, 4], scores [M] (-inf = absent), labels [M] -> keep [M] bool.

    A box is dropped when a kept box of the same class with a higher score (earlier in score order) overlaps it with
    IoU > iou_threshold, as mmcv's `batched_nms`.
    """
    order = jnp.argsort(-scores, stable=True)
    boxes, labels = boxes[order], labels[order]
    present = jnp.isfinite(scores[order])
    index = jnp.arange(scores.shape[0])

    def suppress(i: Array, keep: Array) -> Array:
        overlaps = box_ops.iou(boxes[i], boxes, eps=0.0)
        hit = (overlaps > iou_threshold) & (labels == labels[i]) & (index > i) & keep[i]
        return keep & ~hit

    keep_sorted = jax.lax.fori_loop(0, scores.shape[0], suppress, present)
    return jnp.zeros_like(present).at[order].set(keep_sorted)


def decode_fcos(logits: Array, ltrb: Array, centerness: Array, image_shape: Array, *, image_hw: Sequence[int],
                strides: Sequence[int] = priors.STRIDES, score_thr: float = 0.05, nms_pre: int = 1000,
                max_per_img: int = 100, iou_threshold: float | None = 0.6) -> Detections:
    """mmdet FCOS test of the o2m branch: logits [B, N, C], ltrb [B, N, 4], centerness [B, N, 1] -> K = max_per_img.

    The score threshold and per-level top-k act on the class probability; the kept pairs then score
    probability x sigmoid(centerness) and go through per-class NMS at `iou_threshold` (None: no NMS).
    """
    cls_scores = jax.nn.sigmoid(logits.astype(jnp.float32))
    cand_scores, cand_boxes, cand_labels, cand_points = _per_level_candidates(cls_scores, ltrb, image_hw, strides,
                                                                              score_thr, nms_pre)
    cand_boxes = box_ops.clip_to_image(cand_boxes, image_shape[:, None, :])
    ctr = jax.nn.sigmoid(jnp.take_along_axis(centerness[..., 0].astype(jnp.float32), cand_points, axis=1))
    return _select(cand_scores * ctr, cand_boxes, cand_labels, max_per_img, iou_threshold)   # -inf stays -inf


def decode_outputs(outputs: Mapping[str, Array], image_shape: Array, *, image_hw: Sequence[int],
                   config: ml_collections.ConfigDict) -> Detections:
    """Decode a network output dict (docs/design.md §2) under the full `config`.

    The o2o branch when the model has one; the FCOS o2m branch for the baseline (`model.o2o == 'none'`). NMS runs
    iff `test.nms`.
    """
    test, model = config.test, config.model
    strides = tuple(model.strides)
    iou_threshold = float(test.nms_iou) if test.nms else None
    if model.o2o == "none":
        if "o2m_centerness" not in outputs:
            raise ValueError(f"model.o2o='none' decodes the FCOS one-to-many branch, but the model has "
                             f"o2m={model.o2m!r} (outputs {sorted(outputs)}); set model.o2m='fcos'")
        return decode_fcos(outputs["o2m_logits"], outputs["o2m_ltrb"], outputs["o2m_centerness"], image_shape,
                           image_hw=image_hw, strides=strides, score_thr=test.score_thr, nms_pre=test.nms_pre,
                           max_per_img=test.max_per_img, iou_threshold=iou_threshold)
    return decode_o2o(outputs["o2o_logits"], outputs["o2o_ltrb"], image_shape, image_hw=image_hw, strides=strides,
                      score_thr=test.score_thr, nms_pre=test.nms_pre, max_per_img=test.max_per_img,
                      filter_logits=outputs.get("o2o_filter"), iou_threshold=iou_threshold)


def rescale_boxes(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Host side: boxes [..., K, 4] in resized pixels / scale [..., 2] (resized/original, h, w) -> original pixels."""
    scale = np.asarray(scale, np.float32)
    factors = np.stack([scale[..., 1], scale[..., 0], scale[..., 1], scale[..., 0]], axis=-1)
    return np.asarray(boxes, np.float32) / factors[..., None, :]
