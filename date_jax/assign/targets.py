"""Per-batch assignment drivers: the per-example assigners vmapped over the batch, inside `jax.shard_map` on a mesh.

Each example is assigned on the device that holds it, so the solver's while loops contain no collective; the
point grid and anchors are trace-time constants shared by every example.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections

from date_jax import priors
from date_jax.assign.fcos import fcos_targets
from date_jax.assign.hungarian_cost import hungarian_assign
from date_jax.assign.poto import poto_assign
from date_jax.assign.retina import retina_targets

Array = jax.Array
DATA_AXIS = "data"


def per_example(fn: Callable[..., Any], mesh: Mesh | None = None) -> Callable[..., Any]:
    """vmap `fn` over the leading batch axis of every argument; on a mesh, run it per shard of the `data` axis."""
    batched = jax.vmap(fn)
    if mesh is None:
        return batched
    # check_vma=False: the solver's loop carries start as unvarying constants; nothing here communicates anyway.
    return jax.shard_map(batched, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False)


def o2o_assign(cls_logits: Array, pred_boxes: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array,
               image_shape: Array, grid: priors.PointGrid, assign_config: ml_collections.ConfigDict,
               mesh: Mesh | None = None) -> tuple[Array, Array]:
    """One-to-one assignment of a batch: logits [B, N, C], pred [B, N, 4], gts [B, G, ...], image_shape [B, 2]
    -> (gt_to_point [B, G], point_to_gt [B, N]) with -1 for unmatched / background; 'poto' or 'hungarian'."""
    if assign_config.o2o == "poto":
        def assign(logits, pred, boxes, labels, mask, _):
            return poto_assign(logits, pred, boxes, labels, mask, grid,
                               alpha=assign_config.poto_alpha, radius=assign_config.center_radius)
    elif assign_config.o2o == "hungarian":
        weights = assign_config.hungarian_cost
        def assign(logits, pred, boxes, labels, mask, shape):
            return hungarian_assign(logits, pred, boxes, labels, mask, shape, cls_weight=weights.cls,
                                    l1_weight=weights.l1, giou_weight=weights.giou,
                                    focal_alpha=weights.focal_alpha, focal_gamma=weights.focal_gamma)
    else:
        raise ValueError(f"config.assign.o2o must be 'poto' or 'hungarian', got {assign_config.o2o!r}")
    args = jax.lax.stop_gradient((cls_logits, pred_boxes, gt_boxes, gt_labels, gt_mask, image_shape))
    return per_example(assign, mesh)(*args)


def fcos_assign(gt_boxes: Array, gt_labels: Array, gt_mask: Array, grid: priors.PointGrid, num_classes: int,
                mesh: Mesh | None = None) -> dict[str, Array]:
    """FCOS targets of a batch: gts [B, G, ...] -> dict of [B, N, ...] (see `fcos.fcos_targets`)."""
    ranges = jnp.asarray(priors.fcos_regress_ranges(len(grid.shapes))[grid.levels])
    assign = functools.partial(fcos_targets, jnp.asarray(grid.points), ranges, num_classes=num_classes)
    return per_example(assign, mesh)(*jax.lax.stop_gradient((gt_boxes, gt_labels, gt_mask)))


def retina_assign(gt_boxes: Array, gt_labels: Array, gt_mask: Array, anchors: Array, num_classes: int,
                  retina_config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> dict[str, Array]:
    """RetinaNet targets of a batch: gts [B, G, ...], anchors [A, 4] -> dict of [B, A, ...] (see `retina.py`)."""
    assign = functools.partial(retina_targets, jnp.asarray(anchors), num_classes=num_classes,
                               pos_iou=retina_config.pos_iou, neg_iou=retina_config.neg_iou,
                               min_pos_iou=retina_config.min_pos_iou,
                               gt_max_assign_all=retina_config.gt_max_assign_all)
    return per_example(assign, mesh)(*jax.lax.stop_gradient((gt_boxes, gt_labels, gt_mask)))
