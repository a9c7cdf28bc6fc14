"""FCOS and RetinaNet targets against plain-loop numpy references on random scenes (with padded ground truths)."""
import jax
import numpy as np
import pytest

from date_jax import priors
from date_jax.assign.fcos import fcos_targets
from date_jax.assign.retina import retina_targets
from date_jax.config import assign_config

IMAGE_HW = (128, 192)
NUM_CLASSES = 4


def random_scene(rng, num_valid, max_boxes):
    size = np.exp(rng.uniform(np.log(4), np.log(150), (max_boxes, 2)))
    centre = rng.uniform([0, 0], [IMAGE_HW[1], IMAGE_HW[0]], (max_boxes, 2))
    centre[1] = centre[0] + 2.0                                    # two heavily overlapping gts
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    boxes = np.clip(boxes, 0, [IMAGE_HW[1], IMAGE_HW[0]] * 2).astype(np.float32)
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
    """mmdet MaxIoUAssigner (pos 0.5, neg 0.4, min_pos_iou 0, gt_max_assign_all) + delta coder, with loops."""
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


@pytest.mark.parametrize("num_valid,seed", [(6, 0), (9, 1), (1, 2), (0, 3)])
def test_retina_targets_equal_loop_reference(num_valid, seed):
    anchors = priors.anchors(IMAGE_HW)
    boxes, labels, mask = random_scene(np.random.default_rng(seed), num_valid, 9)
    r = assign_config().retina
    got = jax.device_get(jax.tree.map(lambda x: x[None], retina_targets(
        anchors, boxes, labels, mask, num_classes=NUM_CLASSES, pos_iou=r.pos_iou, neg_iou=r.neg_iou,
        min_pos_iou=r.min_pos_iou, gt_max_assign_all=r.gt_max_assign_all)))
    ref_labels, ref_weights, ref_deltas = retina_reference(anchors, boxes, labels, mask)
    np.testing.assert_array_equal(got["labels"][0], ref_labels)
    np.testing.assert_array_equal(got["label_weights"][0], ref_weights)
    np.testing.assert_allclose(got["deltas"][0], ref_deltas, atol=1e-4)
    if num_valid >= 6:                                             # the scene exercises every band
        assert (ref_weights == 0).sum() > 0 and (ref_labels < NUM_CLASSES).sum() > 0


def test_empty_ground_truth_axis():
    grid = priors.point_grid((64, 64))
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.zeros((0,), bool))
    fcos = fcos_targets(grid.points, priors.fcos_regress_ranges()[grid.levels], *empty, num_classes=3)
    retina = retina_targets(priors.anchors((64, 64)), *empty, num_classes=3)
    assert np.all(np.asarray(fcos["labels"]) == 3) and not np.any(np.asarray(fcos["positive"]))
    assert np.all(np.asarray(retina["labels"]) == 3) and np.all(np.asarray(retina["label_weights"]) == 1)
