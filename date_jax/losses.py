"""Loss terms of DATE (SPEC §5) and `date_loss`, which assigns both branches and sums their weighted terms.

Normalisers are global over the whole batch (SPEC §D.4): counts are summed over every example of the (global) batch,
so the value does not depend on how the batch is sharded. Examples with `example_mask == False` contribute nothing.
Like mmdet, a loss with an average factor is sum / (factor + float32 eps).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from date_jax import boxes as box_ops
from date_jax import priors
from date_jax.assign import targets as assign_targets

Array = jax.Array
FLOAT32_EPS = float(np.finfo(np.float32).eps)
FILTER_CLIP = 1e-5


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0) -> Array:
    """Elementwise sigmoid focal loss of logits [...] against {0, 1} targets [...] -> [...]."""
    prob = jax.nn.sigmoid(logits)
    cross_entropy = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
    p_miss = (1 - prob) * targets + prob * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return weight * p_miss ** gamma * cross_entropy


def giou_loss(pred_boxes: Array, target_boxes: Array) -> Array:
    """1 - GIoU of aligned xyxy boxes [..., 4] -> [...]."""
    return 1.0 - box_ops.giou(pred_boxes, target_boxes)


def log_iou_loss(pred_boxes: Array, target_boxes: Array, eps: float = 1e-6) -> Array:
    """-ln(max(IoU, eps)) of aligned xyxy boxes [..., 4] -> [...] (mmdet IoULoss, mode 'log')."""
    return -jnp.log(jnp.maximum(box_ops.iou(pred_boxes, target_boxes, eps), eps))


def centerness_loss(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy with logits [...] against soft targets in [0, 1] [...] -> [...]."""
    return -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))


def normalized_box_l1(pred_boxes: Array, target_boxes: Array, image_shape: Array) -> Array:
    """L1 between cxcywh of xyxy boxes [..., 4] divided by the image (h, w) [..., 2] (broadcast) -> [...]."""
    scale = jnp.stack([image_shape[..., 1], image_shape[..., 0]] * 2, axis=-1).astype(pred_boxes.dtype)
    diff = box_ops.xyxy_to_cxcywh(pred_boxes / scale) - box_ops.xyxy_to_cxcywh(target_boxes / scale)
    return jnp.sum(jnp.abs(diff), axis=-1)


def delta_l1(pred_deltas: Array, target_deltas: Array) -> Array:
    """L1 between regression deltas [..., 4] -> [...]."""
    return jnp.sum(jnp.abs(pred_deltas - target_deltas), axis=-1)


def filtered_logits(cls_logits: Array, filter_logits: Array) -> Array:
    """3DMF score as a logit: logit(clip(sigmoid(z) * sigmoid(f), 1e-5, 1 - 1e-5)); z [..., C], f [..., 1]."""
    prob = jnp.clip(jax.nn.sigmoid(cls_logits) * jax.nn.sigmoid(filter_logits), FILTER_CLIP, 1 - FILTER_CLIP)
    return jnp.log(prob) - jnp.log1p(-prob)


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


def _o2o_terms(outputs: dict, batch: dict, gt_mask: Array, grid: priors.PointGrid, config: ml_collections.ConfigDict,
               mesh: Mesh | None) -> dict[str, Array]:
    """POTO / Hungarian one-to-one branch: o2o_cls, o2o_box, o2o_iou (weighted)."""
    model, weights = config.model, config.loss
    logits = outputs["o2o_logits"]
    if model.o2o == "3dmf":
        logits = filtered_logits(logits, outputs["o2o_filter"])
    pred = box_ops.ltrb_to_boxes(jnp.asarray(grid.points), outputs["o2o_ltrb"])
    _, point_to_gt = assign_targets.o2o_assign(logits, pred, batch["boxes"], batch["labels"], gt_mask,
                                               batch["image_shape"], grid, config.assign, mesh)
    positive = point_to_gt >= 0
    labels = jnp.where(positive, _gather_gts(batch["labels"], point_to_gt), model.num_classes)
    target = jax.lax.stop_gradient(_gather_gts(batch["boxes"], point_to_gt))
    example = batch["example_mask"].astype(logits.dtype)[:, None, None]
    num_pos = jnp.sum(positive)
    focal = sigmoid_focal_loss(logits, _one_hot(labels, model.num_classes), weights.focal_alpha, weights.focal_gamma)
    box_l1 = normalized_box_l1(pred, target, batch["image_shape"][:, None, :])
    return dict(
        o2o_cls=weights.o2o_cls * _average(jnp.sum(focal * example), jnp.maximum(num_pos, 1)),
        o2o_box=weights.o2o_box * _average(jnp.sum(jnp.where(positive, box_l1, 0.0)), num_pos),
        o2o_iou=weights.o2o_iou * _average(jnp.sum(jnp.where(positive, giou_loss(pred, target), 0.0)), num_pos),
    )


def _fcos_terms(outputs: dict, batch: dict, gt_mask: Array, grid: priors.PointGrid,
                config: ml_collections.ConfigDict, mesh: Mesh | None) -> dict[str, Array]:
    """FCOS one-to-many branch: fcos_cls, fcos_iou, fcos_ctr (weighted)."""
    model, weights = config.model, config.loss
    targets = assign_targets.fcos_assign(batch["boxes"], batch["labels"], gt_mask, grid, model.num_classes, mesh)
    positive = targets["positive"]
    centerness = targets["centerness"]
    points = jnp.asarray(grid.points)
    logits = outputs["o2m_logits"]
    example = batch["example_mask"].astype(logits.dtype)[:, None, None]
    num_pos = jnp.maximum(jnp.sum(positive), 1)
    focal = sigmoid_focal_loss(logits, _one_hot(targets["labels"], model.num_classes),
                               weights.focal_alpha, weights.focal_gamma)
    pred = box_ops.ltrb_to_boxes(points, outputs["o2m_ltrb"])
    target = box_ops.ltrb_to_boxes(points, targets["ltrb"])
    iou_term = jnp.where(positive, centerness * log_iou_loss(pred, target), 0.0)
    ctr_term = jnp.where(positive, centerness_loss(outputs["o2m_centerness"][..., 0], centerness), 0.0)
    return dict(
        fcos_cls=weights.fcos_cls * _average(jnp.sum(focal * example), num_pos),
        fcos_iou=weights.fcos_iou * _average(jnp.sum(iou_term), jnp.maximum(jnp.sum(centerness), 1e-6)),
        fcos_ctr=weights.fcos_ctr * _average(jnp.sum(ctr_term), num_pos),
    )


def _retina_terms(outputs: dict, batch: dict, gt_mask: Array, image_hw: tuple[int, int],
                  config: ml_collections.ConfigDict, mesh: Mesh | None) -> dict[str, Array]:
    """RetinaNet one-to-many branch: retina_cls, retina_box (weighted), normalised by sum_images max(#pos, 1)."""
    model, weights = config.model, config.loss
    anchors = priors.anchors(image_hw, model.strides, model.anchors.octave_base_scale,
                             model.anchors.scales_per_octave, tuple(model.anchors.ratios))
    targets = assign_targets.retina_assign(batch["boxes"], batch["labels"], gt_mask, anchors, model.num_classes,
                                           config.assign.retina, mesh)
    positive = targets["positive"]
    logits = outputs["o2m_logits"]
    example = batch["example_mask"]
    num_pos = jnp.sum(jnp.where(example, jnp.maximum(jnp.sum(positive, axis=1), 1), 0))
    focal = sigmoid_focal_loss(logits, _one_hot(targets["labels"], model.num_classes),
                               weights.focal_alpha, weights.focal_gamma)
    cls_weight = targets["label_weights"] * example.astype(logits.dtype)[:, None]
    box_term = jnp.where(positive, delta_l1(outputs["o2m_deltas"], targets["deltas"]), 0.0)
    return dict(
        retina_cls=weights.retina_cls * _average(jnp.sum(focal * cls_weight[..., None]), num_pos),
        retina_box=weights.retina_box * _average(jnp.sum(box_term), num_pos),
    )


def date_loss(outputs: dict, batch: dict, config: ml_collections.ConfigDict,
              mesh: Mesh | None = None) -> tuple[Array, dict[str, Array]]:
    """DATE loss of a batch: network outputs (DESIGN §4) and batch [B, ...] -> (total scalar, weighted terms)."""
    model = config.model
    outputs = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                           dict(outputs))                                                 # losses in float32 always
    image_hw = tuple(int(d) for d in batch["image"].shape[1:3])
    grid = priors.point_grid(image_hw, model.strides)
    gt_mask = batch["box_mask"] & batch["example_mask"][:, None]
    terms: dict[str, Array] = {}
    if model.o2o in ("point", "3dmf"):
        terms.update(_o2o_terms(outputs, batch, gt_mask, grid, config, mesh))
    elif model.o2o != "none":
        raise ValueError(f"config.model.o2o must be 'point', '3dmf' or 'none', got {model.o2o!r}")
    if model.o2m == "fcos":
        terms.update(_fcos_terms(outputs, batch, gt_mask, grid, config, mesh))
    elif model.o2m == "retina":
        terms.update(_retina_terms(outputs, batch, gt_mask, image_hw, config, mesh))
    elif model.o2m != "none":
        raise ValueError(f"config.model.o2m must be 'fcos', 'retina' or 'none', got {model.o2m!r}")
    total = sum(terms.values(), jnp.zeros((), jnp.float32))
    return total, terms
