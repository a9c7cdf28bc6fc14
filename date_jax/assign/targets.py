"""The targets of one example for both branches: its one-to-one matching and its one-to-many targets.

`example_targets` is the one assignment entry of the train step: it runs per example (the step vmaps it inside
`sharding.per_example`, under one `stop_gradient`), picks the one-to-one assigner from `O2O_ASSIGNERS` by
`config.assign.o2o` and the one-to-many targets from `O2M_TARGETS` by `config.model.o2m`, and returns a flat dict of
arrays whose keys name their branch (`o2o_*`, `fcos_*`, `retina_*`) — what `date_jax.losses` consumes. Every assigner
has one signature: (outputs of the example, its ground truth, the static geometry, the config) -> targets.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from date_jax import boxes as box_ops
from date_jax import priors
from date_jax.assign.fcos import fcos_targets
from date_jax.assign.hungarian_cost import hungarian_assign
from date_jax.assign.poto import matched_outside_prior, poto_assign
from date_jax.assign.retina import retina_targets, valid_anchors
from date_jax.models.head import o2o_class_logits

Array = jax.Array
Targets = dict[str, Array]


class GroundTruth(NamedTuple):
    """One example's ground truth: boxes [G, 4] xyxy pixels, labels [G], mask [G] (valid slots of a real example),
    image_shape [2] (unpadded h, w)."""

    boxes: Array
    labels: Array
    mask: Array
    image_shape: Array


class Geometry(NamedTuple):
    """Static priors of the padded input: the point grid and, for RetinaNet, its anchors [A, 4] (None otherwise)."""

    grid: priors.PointGrid
    anchors: Array | None


def _poto(outputs: Mapping[str, Array], gt: GroundTruth, geometry: Geometry,
          config: ml_collections.ConfigDict) -> Targets:
    """POTO (docs/spec.md §4.1): point_to_gt [N] (-1 background) and, for the training metrics, outside_prior [G]
    (valid gts whose point lies outside their own centre prior: no free prior point was left for them)."""
    grid, radius = geometry.grid, config.assign.center_radius
    pred = box_ops.ltrb_to_boxes(jnp.asarray(grid.points), outputs["o2o_ltrb"])
    gt_to_point, point_to_gt = poto_assign(o2o_class_logits(outputs), pred, gt.boxes, gt.labels, gt.mask, grid,
                                           alpha=config.assign.poto_alpha, radius=radius)
    outside = matched_outside_prior(gt_to_point, gt.boxes, gt.mask, grid, radius)
    return {"o2o_point_to_gt": point_to_gt, "o2o_outside_prior": outside}


def _detr(outputs: Mapping[str, Array], gt: GroundTruth, geometry: Geometry,
          config: ml_collections.ConfigDict) -> Targets:
    """DETR-style cost matching (docs/spec.md §4.2): point_to_gt [N] (-1 background)."""
    weights = config.assign.hungarian_cost
    pred = box_ops.ltrb_to_boxes(jnp.asarray(geometry.grid.points), outputs["o2o_ltrb"])
    _, point_to_gt = hungarian_assign(o2o_class_logits(outputs), pred, gt.boxes, gt.labels, gt.mask,
                                      gt.image_shape, cls_weight=weights.cls, l1_weight=weights.l1,
                                      giou_weight=weights.giou, focal_alpha=weights.focal_alpha,
                                      focal_gamma=weights.focal_gamma)
    return {"o2o_point_to_gt": point_to_gt}


def _fcos(outputs: Mapping[str, Array], gt: GroundTruth, geometry: Geometry,
          config: ml_collections.ConfigDict) -> Targets:
    """FCOS targets (docs/spec.md §4.3): labels [N], ltrb [N, 4], centerness [N], positive [N]."""
    grid = geometry.grid
    ranges = jnp.asarray(priors.fcos_regress_ranges(len(grid.shapes))[grid.levels])
    t = fcos_targets(jnp.asarray(grid.points), ranges, gt.boxes, gt.labels, gt.mask,
                     num_classes=config.model.num_classes)
    return {f"fcos_{k}": t[k] for k in ("labels", "ltrb", "centerness", "positive")}


def _retina(outputs: Mapping[str, Array], gt: GroundTruth, geometry: Geometry,
            config: ml_collections.ConfigDict) -> Targets:
    """RetinaNet targets (docs/spec.md §4.4): labels [A], label_weights [A], deltas [A, 4], positive [A]; anchors
    outside the image's own padded shape are neither positive nor negative."""
    r, anchors = config.assign.retina, config.model.anchors
    valid = valid_anchors(gt.image_shape, geometry.grid.shapes, config.model.strides,
                          priors.num_anchors_per_point(anchors.scales_per_octave, tuple(anchors.ratios)))
    t = retina_targets(jnp.asarray(geometry.anchors), gt.boxes, gt.labels, gt.mask, valid,
                       num_classes=config.model.num_classes, pos_iou=r.pos_iou, neg_iou=r.neg_iou,
                       min_pos_iou=r.min_pos_iou, gt_max_assign_all=r.gt_max_assign_all)
    return {f"retina_{k}": t[k] for k in ("labels", "label_weights", "deltas", "positive")}


Assigner = Callable[[Mapping[str, Array], GroundTruth, Geometry, ml_collections.ConfigDict], Targets]
O2O_ASSIGNERS: dict[str, Assigner] = {"poto": _poto, "hungarian": _detr}
O2M_TARGETS: dict[str, Assigner] = {"fcos": _fcos, "retina": _retina}


def geometry(config: ml_collections.ConfigDict, image_hw: tuple[int, int]) -> Geometry:
    """The static priors of a padded input of `image_hw` for the model of `config`."""
    model = config.model
    anchors = None
    if model.o2m == "retina":
        anchors = jnp.asarray(priors.anchors(image_hw, model.strides, model.anchors.octave_base_scale,
                                             model.anchors.scales_per_octave, tuple(model.anchors.ratios)))
    return Geometry(priors.point_grid(image_hw, model.strides), anchors)


def check_assigners(config: ml_collections.ConfigDict) -> None:
    """Raise a ValueError naming the config key when a branch asks for an assigner that does not exist."""
    if config.model.o2o != "none" and config.assign.o2o not in O2O_ASSIGNERS:
        raise ValueError(f"config.assign.o2o={config.assign.o2o!r}; choose one of {sorted(O2O_ASSIGNERS)}")
    if config.model.o2m not in (*O2M_TARGETS, "none"):
        raise ValueError(f"config.model.o2m={config.model.o2m!r}; choose one of {sorted(O2M_TARGETS)} or 'none'")


def example_targets(outputs: Mapping[str, Array], gt: GroundTruth, geometry: Geometry,
                    config: ml_collections.ConfigDict) -> Targets:
    """Targets of one example: network outputs of one image ([N, ...]) and its ground truth -> flat dict of arrays."""
    targets: Targets = {}
    if config.model.o2o != "none":
        targets.update(O2O_ASSIGNERS[config.assign.o2o](outputs, gt, geometry, config))
    if config.model.o2m != "none":
        targets.update(O2M_TARGETS[config.model.o2m](outputs, gt, geometry, config))
    return targets


def batch_ground_truth(batch: Mapping[str, Any]) -> GroundTruth:
    """The ground truth of a batch [B, ...]; padded examples (example_mask False) have no valid box."""
    return GroundTruth(batch["boxes"], batch["labels"], batch["box_mask"] & batch["example_mask"][:, None],
                       batch["image_shape"])
