"""FCOS and RetinaNet targets against plain-loop numpy references on random scenes (with padded ground truths)."""
import functools
import math

import jax
import numpy as np
import pytest

from date_jax import priors
from date_jax.assign.fcos import fcos_targets
from date_jax.assign.retina import retina_targets, valid_anchors
from date_jax.config import assign_config

IMAGE_HW = (128, 192)
NUM_CLASSES = 4


def random_scene(rng, num_valid, max_boxes, image_hw=IMAGE_HW):
    size = np.exp(rng.uniform(np.log(4), np.log(150), (max_boxes, 2)))
    centre = rng.uniform([0, 0], [image_hw[1], image_hw[0]], (max_boxes, 2))
    centre[1] = centre[0] + 2.0                                    # two heavily overlapping gts
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    boxes = np.clip(boxes, 0, [image_hw[1], image_hw[0]] * 2).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, max_boxes).astype(np.int32)
    mask = np.arange(max_boxes) < num_valid
    return boxes, labels, mask


def fcos_reference(points, levels, boxes, labels, mask):
    """mmdet FCOS targets with explicit loops over points and gts."""
    ranges = [(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)]
    n = len(points)
    out_labels, out_ltrb, out_ctr = np.full(n, NUM_CLASSES), np.zeros((n, 4)), np.zeros(n)
    for i, (x, y) in enumerate(points.astype(np.float64)):
        best, best_area = -1, 1e8
        for g in range(len(boxes)):
            if not mask[g]:
                continue
            x1, y1, x2, y2 = boxes[g].astype(np.float64)
            d = (x - x1, y - y1, x2 - x, y2 - y)
            lo, hi = ranges[levels[i]]
            area = (x2 - x1) * (y2 - y1)
            if min(d) > 0 and lo <= max(d) <= hi and area < best_area:
                best, best_area = g, area
        if best >= 0:
            x1, y1, x2, y2 = boxes[best].astype(np.float64)
            l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
            out_labels[i] = labels[best]
            out_ltrb[i] = (l, t, r, b)
            out_ctr[i] = np.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
    return out_labels, out_ltrb, out_ctr


def iou_np(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def retina_reference(anchors, boxes, labels, mask):
    """mmdet MaxIoUAssigner (pos 0.5, neg 0.4, min_pos_iou 0, gt_max_assign_all) + delta coder, with loops, on every
    anchor given (an image whose padded shape is the bucket)."""
    gts = [g for g in range(len(boxes)) if mask[g]]
    anchors64, boxes64 = anchors.astype(np.float64), boxes.astype(np.float64)
    # IoU in float32 like the device: ties between anchors (tiny gts) must stay exact ties
    overlaps = np.array([[iou_np(a, boxes[g]) for g in gts] for a in anchors]).reshape(len(anchors), len(gts))
    assigned = np.full(len(anchors), -1)                           # -1 ignore, 0 negative, k + 1 gt k
    if not gts:
        assigned[:] = 0
    else:
        best = overlaps.max(1)
        assigned[(best >= 0) & (best < 0.4)] = 0
        positive = best >= 0.5
        assigned[positive] = overlaps.argmax(1)[positive] + 1
        for k in range(len(gts)):
            top = overlaps[:, k].max()
            if top >= 0.0:
                assigned[overlaps[:, k] == top] = k + 1
    out_labels = np.full(len(anchors), NUM_CLASSES)
    weights = (assigned >= 0).astype(np.float64)
    deltas = np.zeros((len(anchors), 4))
    for i in np.nonzero(assigned > 0)[0]:
        g = gts[assigned[i] - 1]
        out_labels[i] = labels[g]
        ax, ay = (anchors64[i, 0] + anchors64[i, 2]) / 2, (anchors64[i, 1] + anchors64[i, 3]) / 2
        aw, ah = anchors64[i, 2] - anchors64[i, 0], anchors64[i, 3] - anchors64[i, 1]
        x1, y1, x2, y2 = boxes64[g]
        deltas[i] = (((x1 + x2) / 2 - ax) / aw, ((y1 + y2) / 2 - ay) / ah, np.log((x2 - x1) / aw),
                     np.log((y2 - y1) / ah))
    return out_labels, weights, deltas


def valid_flags_reference(image_shape, bucket_hw, pad_divisor=32, strides=priors.STRIDES, num_base=9):
    """mmdet AnchorGenerator.valid_flags with loops: the image padded to /pad_divisor, then per level the locations
    below ceil(pad / stride) (capped by the feature map), every base anchor of a location alike."""
    pad_h = math.ceil(image_shape[0] / pad_divisor) * pad_divisor
    pad_w = math.ceil(image_shape[1] / pad_divisor) * pad_divisor
    flags = []
    for (feat_h, feat_w), stride in zip(priors.level_shapes(bucket_hw, strides), strides):
        valid_h, valid_w = min(math.ceil(pad_h / stride), feat_h), min(math.ceil(pad_w / stride), feat_w)
        for i in range(feat_h):
            for j in range(feat_w):
                flags += [i < valid_h and j < valid_w] * num_base
    return np.array(flags)


def retina_reference_valid(anchors, boxes, labels, mask, valid):
    """mmdet anchor head: assign on the valid anchors only, then unmap (label background, weights 0, deltas 0)."""
    sub_labels, sub_weights, sub_deltas = retina_reference(anchors[valid], boxes, labels, mask)
    out_labels, weights = np.full(len(anchors), NUM_CLASSES), np.zeros(len(anchors))
    deltas = np.zeros((len(anchors), 4))
    out_labels[valid], weights[valid], deltas[valid] = sub_labels, sub_weights, sub_deltas
    return out_labels, weights, deltas


@pytest.mark.parametrize("num_valid,seed", [(6, 0), (9, 1), (1, 2), (0, 3)])
def test_fcos_targets_equal_loop_reference(num_valid, seed):
    grid = priors.point_grid(IMAGE_HW)
    boxes, labels, mask = random_scene(np.random.default_rng(seed), num_valid, 9)
    got = jax.device_get(jax.tree.map(lambda x: x[None], fcos_targets(
        grid.points, priors.fcos_regress_ranges()[grid.levels], boxes, labels, mask, num_classes=NUM_CLASSES)))
    ref_labels, ref_ltrb, ref_ctr = fcos_reference(grid.points, grid.levels, boxes, labels, mask)
    np.testing.assert_array_equal(got["labels"][0], ref_labels)
    np.testing.assert_array_equal(got["positive"][0], ref_labels < NUM_CLASSES)
    np.testing.assert_allclose(got["ltrb"][0], ref_ltrb, atol=1e-4)
    np.testing.assert_allclose(got["centerness"][0], ref_ctr, atol=1e-5)
    assert num_valid == 0 or (ref_labels < NUM_CLASSES).sum() > 0


@functools.lru_cache(maxsize=None)
def _retina_fn():
    """jit(vmap) of retina_targets with valid_anchors per image, as a per-example target function calls them."""
    anchors = priors.anchors(IMAGE_HW)
    shapes = priors.level_shapes(IMAGE_HW)
    retina = assign_config().retina

    def one(boxes, labels, mask, image_shape):
        valid = valid_anchors(image_shape, shapes, priors.STRIDES, priors.num_anchors_per_point())
        return retina_targets(anchors, boxes, labels, mask, valid, NUM_CLASSES, pos_iou=retina.pos_iou,
                              neg_iou=retina.neg_iou, min_pos_iou=retina.min_pos_iou,
                              gt_max_assign_all=retina.gt_max_assign_all)
    return jax.jit(jax.vmap(one))


@pytest.mark.parametrize("num_valid,seed,image_shape", [(6, 0, IMAGE_HW), (9, 1, (128, 170)), (1, 2, (70, 100)),
                                                        (0, 3, (90, 140)), (7, 4, (96, 128))])
def test_retina_targets_equal_loop_reference(num_valid, seed, image_shape):
    anchors = priors.anchors(IMAGE_HW)
    boxes, labels, mask = random_scene(np.random.default_rng(seed), num_valid, 9, image_shape)
    # seed 4: a thin gt on the bottom edge; an anchor centred on the edge (off the padded shape) ties its best IoU
    if seed == 4:
        boxes[0] = [40, 92, 72, 96]
    got = jax.device_get(_retina_fn()(boxes[None], labels[None], mask[None], np.asarray([image_shape], np.int32)))
    got = {k: v[0] for k, v in got.items()}
    valid = valid_flags_reference(image_shape, IMAGE_HW)
    ref_labels, ref_weights, ref_deltas = retina_reference_valid(anchors, boxes, labels, mask, valid)
    np.testing.assert_array_equal(got["labels"], ref_labels)
    np.testing.assert_array_equal(got["label_weights"], ref_weights)
    np.testing.assert_allclose(got["deltas"], ref_deltas, atol=1e-4)
    # the loss normaliser counts positives: only valid anchors can be positive
    np.testing.assert_array_equal(got["positive"], ref_labels < NUM_CLASSES)
    assert not got["positive"][~valid].any() and np.all(got["gt_index"][~valid] == -1)
    if num_valid >= 6:                                             # the scene exercises every band
        assert (ref_weights[valid] == 0).sum() > 0 and (ref_labels < NUM_CLASSES).sum() > 0
    assert valid.all() == (tuple(math.ceil(d / 32) * 32 for d in image_shape) == IMAGE_HW)   # (128, 170) pads to it
    if not valid.all():
        # assigning on every anchor of the bucket (the old behaviour) weights the anchors off the padded shape
        _, all_weights, _ = retina_reference(anchors, boxes, labels, mask)
        assert (~valid).sum() > 0 and (all_weights[~valid] == 1).any()
    if seed == 4:
        all_labels, _, _ = retina_reference(anchors, boxes, labels, mask)
        assert (all_labels[~valid] < NUM_CLASSES).any(), "the edge gt must have had a positive off the padded shape"


@pytest.mark.parametrize("pad_divisor", [32, 128])
def test_valid_anchors_equal_loop_reference(pad_divisor):
    bucket = (256, 384)
    shapes = [(256, 384), (255, 383), (200, 129), (33, 65), (1, 1), (97, 300)]
    fn = jax.jit(jax.vmap(lambda shape: valid_anchors(shape, priors.level_shapes(bucket), priors.STRIDES, 9,
                                                       pad_divisor)))
    got = np.asarray(fn(np.asarray(shapes, np.int32)))
    assert got.shape == (len(shapes), len(priors.anchors(bucket)))
    for flags, shape in zip(got, shapes):
        np.testing.assert_array_equal(flags, valid_flags_reference(shape, bucket, pad_divisor))
    assert got[0].all() and not got[3].all()


def test_empty_ground_truth_axis():
    grid = priors.point_grid((64, 64))
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.zeros((0,), bool))
    fcos = fcos_targets(grid.points, priors.fcos_regress_ranges()[grid.levels], *empty, num_classes=3)
    valid = valid_anchors(np.array([30, 64]), priors.level_shapes((64, 64)), priors.STRIDES, 9)
    retina = retina_targets(priors.anchors((64, 64)), *empty, valid, num_classes=3)
    assert np.all(np.asarray(fcos["labels"]) == 3) and not np.any(np.asarray(fcos["positive"]))
    assert np.all(np.asarray(retina["labels"]) == 3)
    np.testing.assert_array_equal(retina["label_weights"], valid_flags_reference((30, 64), (64, 64)))
    assert not np.asarray(valid).all()
