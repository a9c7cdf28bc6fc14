"""Loss terms of DATE (docs/spec.md §5) and `date_loss`, the weighted sum of both branches' terms given their targets.

Pure functions of arrays: the targets come from `date_jax.assign.targets` (computed by the train step), the weights
from `config.loss`. Normalisers are global over the whole batch (docs/spec.md §D.4): counts are summed over every
example of
the (global) batch, so the value does not depend on how the batch is sharded. Examples with `example_mask == False`
contribute nothing. Like mmdet, a loss with an average factor is sum / (factor + float32 eps).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from date_jax import boxes as box_ops
from date_jax.models.head import o2o_class_logits

Array = jax.Array
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0) -> Array:
    """Elementwise sigmoid focal loss of logits [...] against {0, 1} targets [...] -> [...]."""
    prob = jax.nn.sigmoid(logits)
    cross_entropy = binary_cross_entropy(logits, targets)
    p_miss = (1 - prob) * targets + prob * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return weight * p_miss ** gamma * cross_entropy


def giou_loss(pred_boxes: Array, target_boxes: Array) -> Array:
    """1 - GIoU of aligned xyxy boxes [..., 4] -> [...]."""
    return 1.0 - box_ops.giou(pred_boxes, target_boxes)


def log_iou_loss(pred_boxes: Array, target_boxes: Array, eps: float = 1e-6) -> Array:
    """-ln(max(IoU, eps)) of aligned xyxy boxes [..., 4] -> [...] (mmdet IoULoss, mode 'log')."""
    return -jnp.log(jnp.maximum(box_ops.iou(pred_boxes, target_boxes, eps), eps))


def binary_cross_entropy(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy with logits [...] against (soft) targets in [0, 1] [...] -> [...]."""
    return -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))


def normalized_box_l1(pred_boxes: Array, target_boxes: Array, image_shape: Array) -> Array:
    """L1 between cxcywh of xyxy boxes [..., 4] divided by the image (h, w) [..., 2] (broadcast) -> [...]."""
    scale = jnp.stack([image_shape[..., 1], image_shape[..., 0]] * 2, axis=-1).astype(pred_boxes.dtype)
    diff = box_ops.xyxy_to_cxcywh(pred_boxes / scale) - box_ops.xyxy_to_cxcywh(target_boxes / scale)
    return jnp.sum(jnp.abs(diff), axis=-1)


def delta_l1(pred_deltas: Array, target_deltas: Array) -> Array:
    """L1 between regression deltas [..., 4] -> [...]."""
    return jnp.sum(jnp.abs(pred_deltas - target_deltas), axis=-1)


def _average(total: Array, factor: Array) -> Array:
    """mmdet's reduction with an average factor."""
    return total / (factor + FLOAT32_EPS)


def _gather_gts(values: Array, index: Array) -> Array:
    """values [B, G, ...] at per-location gt ids [B, L] (-1 allowed) -> [B, L, ...]."""
    if values.shape[1] == 0:
        return jnp.zeros(index.shape + values.shape[2:], values.dtype)
    safe = jnp.maximum(index, 0)
    return jax.vmap(lambda v, i: v[i])(values, safe)


def _one_hot(labels: Array, num_classes: int) -> Array:
    """labels [...] with num_classes meaning background -> float targets [..., C] (background all zero)."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _o2o_terms(outputs: Mapping[str, Array], batch: Mapping[str, Array], targets: Mapping[str, Array],
               weights: ml_collections.ConfigDict, points: Array) -> dict[str, Array]:
    """One-to-one branch: o2o_cls, o2o_box, o2o_iou (weighted)."""
    logits = o2o_class_logits(outputs)
    num_classes = logits.shape[-1]
    pred = box_ops.ltrb_to_boxes(points, outputs["o2o_ltrb"])
    point_to_gt = targets["o2o_point_to_gt"]
    positive = point_to_gt >= 0
    labels = jnp.where(positive, _gather_gts(batch["labels"], point_to_gt), num_classes)
    target = _gather_gts(batch["boxes"], point_to_gt)
    example = batch["example_mask"].astype(logits.dtype)[:, None, None]
    num_pos = jnp.sum(positive)
    focal = sigmoid_focal_loss(logits, _one_hot(labels, num_classes), weights.focal_alpha, weights.focal_gamma)
    box_l1 = normalized_box_l1(pred, target, batch["image_shape"][:, None, :])
    return dict(
        o2o_cls=weights.o2o_cls * _average(jnp.sum(focal * example), jnp.maximum(num_pos, 1)),
        o2o_box=weights.o2o_box * _average(jnp.sum(jnp.where(positive, box_l1, 0.0)), num_pos),
        o2o_iou=weights.o2o_iou * _average(jnp.sum(jnp.where(positive, giou_loss(pred, target), 0.0)), num_pos),
    )


def _fcos_terms(outputs: Mapping[str, Array], batch: Mapping[str, Array], targets: Mapping[str, Array],
                weights: ml_collections.ConfigDict, points: Array) -> dict[str, Array]:
    """FCOS one-to-many branch: fcos_cls, fcos_iou, fcos_ctr (weighted)."""
    positive, centerness = targets["fcos_positive"], targets["fcos_centerness"]
    logits = outputs["o2m_logits"]
    example = batch["example_mask"].astype(logits.dtype)[:, None, None]
    num_pos = jnp.maximum(jnp.sum(positive), 1)
    focal = sigmoid_focal_loss(logits, _one_hot(targets["fcos_labels"], logits.shape[-1]),
                               weights.focal_alpha, weights.focal_gamma)
    pred = box_ops.ltrb_to_boxes(points, outputs["o2m_ltrb"])
    target = box_ops.ltrb_to_boxes(points, targets["fcos_ltrb"])
    iou_term = jnp.where(positive, centerness * log_iou_loss(pred, target), 0.0)
    ctr_term = jnp.where(positive, binary_cross_entropy(outputs["o2m_centerness"][..., 0], centerness), 0.0)
    return dict(
        fcos_cls=weights.fcos_cls * _average(jnp.sum(focal * example), num_pos),
        fcos_iou=weights.fcos_iou * _average(jnp.sum(iou_term), jnp.maximum(jnp.sum(centerness), 1e-6)),
        fcos_ctr=weights.fcos_ctr * _average(jnp.sum(ctr_term), num_pos),
    )


def _retina_terms(outputs: Mapping[str, Array], batch: Mapping[str, Array], targets: Mapping[str, Array],
                  weights: ml_collections.ConfigDict, points: Array) -> dict[str, Array]:
    """RetinaNet one-to-many branch: retina_cls, retina_box (weighted), normalised by sum_images max(#pos, 1)."""
    del points   # the deltas are relative to the anchors
    positive = targets["retina_positive"]
    logits = outputs["o2m_logits"]
    example = batch["example_mask"]
    num_pos = jnp.sum(jnp.where(example, jnp.maximum(jnp.sum(positive, axis=1), 1), 0))
    focal = sigmoid_focal_loss(logits, _one_hot(targets["retina_labels"], logits.shape[-1]),
                               weights.focal_alpha, weights.focal_gamma)
    cls_weight = targets["retina_label_weights"] * example.astype(logits.dtype)[:, None]
    box_term = jnp.where(positive, delta_l1(outputs["o2m_deltas"], targets["retina_deltas"]), 0.0)
    return dict(
        retina_cls=weights.retina_cls * _average(jnp.sum(focal * cls_weight[..., None]), num_pos),
        retina_box=weights.retina_box * _average(jnp.sum(box_term), num_pos),
    )


BRANCH_TERMS = {"o2o": _o2o_terms, "fcos": _fcos_terms, "retina": _retina_terms}


def date_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], targets: Mapping[str, Array],
              weights: ml_collections.ConfigDict, points: Array) -> tuple[Array, dict[str, Array]]:
    """DATE loss of a batch: network outputs [B, N, ...], batch [B, ...], targets of `assign.targets` [B, ...],
    loss weights (`config.loss`) and the point grid [N, 2] -> (total scalar, weighted terms). Every branch whose
    targets are present contributes; everything is computed in float32."""
    outputs = {k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in outputs.items()}
    points = jnp.asarray(points, jnp.float32)
    terms: dict[str, Array] = {}
    for branch, terms_of in BRANCH_TERMS.items():
        if any(key.startswith(f"{branch}_") for key in targets):
            terms.update(terms_of(outputs, batch, targets, weights, points))
    total = sum(terms.values(), jnp.zeros((), jnp.float32))
    return total, terms
