"""POTO on a realistic 800x1344 image (22,400 points) against scipy on the full N x G quality matrix built in numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from date_jax import priors
from date_jax.assign.poto import poto_assign

IMAGE_HW = (800, 1344)
GRID = priors.point_grid(IMAGE_HW)


def reference_quality(points, strides, pred, prob, gts, alpha=0.8, radius=1.5):
    """Full [N, G] POTO quality in float64 with explicit per-gt loops (-1 outside the centre prior)."""
    points, strides, pred = points.astype(np.float64), strides.astype(np.float64), pred.astype(np.float64)
    quality = np.empty((len(points), len(gts)))
    pred_area = np.clip(pred[:, 2] - pred[:, 0], 0, None) * np.clip(pred[:, 3] - pred[:, 1], 0, None)
    for g, (x1, y1, x2, y2) in enumerate(gts.astype(np.float64)):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left = np.maximum(cx - radius * strides, x1)
        right = np.minimum(cx + radius * strides, x2)
        top = np.maximum(cy - radius * strides, y1)
        bottom = np.minimum(cy + radius * strides, y2)
        inside = (points[:, 0] > left) & (points[:, 0] < right) & (points[:, 1] > top) & (points[:, 1] < bottom)
        iw = np.clip(np.minimum(pred[:, 2], x2) - np.maximum(pred[:, 0], x1), 0, None)
        ih = np.clip(np.minimum(pred[:, 3], y2) - np.maximum(pred[:, 1], y1), 0, None)
        inter = iw * ih
        union = np.maximum(pred_area + (x2 - x1) * (y2 - y1) - inter, 1e-6)
        q = prob[:, g] ** (1 - alpha) * (inter / union) ** alpha
        quality[:, g] = np.where(inside, q, -1.0)
    return quality


def make_scene(rng, num_valid, max_boxes):
    """gts (some sharing centres, tiny to huge), predictions near gts / degenerate / random, logits [N, C]."""
    h, w = 760, 1333
    size = np.exp(rng.uniform(np.log(6), np.log(700), (max_boxes, 2)))
    centre = rng.uniform([0, 0], [w, h], (max_boxes, 2))
    centre[1::4] = centre[0::4][: len(centre[1::4])] + rng.normal(0, 3, (len(centre[1::4]), 2))
    gts = np.concatenate([centre - size / 2, centre + size / 2], 1)
    gts = np.clip(gts, 0, [w, h, w, h]).astype(np.float32)
    labels = rng.integers(0, 5, max_boxes).astype(np.int32)
    mask = np.arange(max_boxes) < num_valid
    n = GRID.num_points
    near = gts[rng.integers(0, max(num_valid, 1), n)]
    pred = near + rng.normal(0, 1, (n, 4)) * (near[:, 2:] - near[:, :2]).repeat(2, 1) * 0.2
    kind = rng.integers(0, 3, n)
    points = GRID.points
    degenerate = np.concatenate([points, points + rng.uniform(0, 50, (n, 2)) * (rng.random((n, 1)) < 0.5)], 1)
    random_boxes = np.concatenate([points - rng.uniform(0, 300, (n, 2)), points + rng.uniform(0, 300, (n, 2))], 1)
    pred = np.where(kind[:, None] == 0, pred, np.where(kind[:, None] == 1, degenerate, random_boxes))
    logits = rng.normal(-3, 2, (n, 5)).astype(np.float32)
    return gts, labels, mask, pred.astype(np.float32), logits


@functools.lru_cache(maxsize=None)
def _jitted(radius=1.5):
    return jax.jit(lambda *args: poto_assign(*args, grid=GRID, radius=radius))


@pytest.mark.parametrize("num_valid,max_boxes,seed,radius",
                         [(1, 100, 0, 1.5), (30, 100, 1, 1.5), (100, 100, 2, 1.5), (7, 7, 3, 1.5), (20, 30, 4, 2.5)])
def test_poto_total_equals_scipy_on_full_matrix(num_valid, max_boxes, seed, radius):
    assert GRID.num_points == 22400
    rng = np.random.default_rng(seed)
    gts, labels, mask, pred, logits = make_scene(rng, num_valid, max_boxes)
    gt_to_point, point_to_gt = jax.device_get(_jitted(radius)(logits, pred, gts, labels, mask))

    prob = 1 / (1 + np.exp(-logits[:, labels[:num_valid]].astype(np.float64)))
    full = reference_quality(GRID.points, GRID.strides, pred, prob, gts[:num_valid], radius=radius)
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(full, maximize=True)
    expected = full[ref_rows, ref_cols].sum()

    assert np.all(gt_to_point[num_valid:] == -1), "padded ground truths must take part in nothing"
    matched = gt_to_point[:num_valid]
    assert np.all(matched >= 0) and len(set(matched.tolist())) == num_valid
    np.testing.assert_allclose(full[matched, np.arange(num_valid)].sum(), expected, atol=1e-4)
    inverse = np.full(GRID.num_points, -1)
    inverse[matched] = np.arange(num_valid)
    np.testing.assert_array_equal(point_to_gt, inverse)
    # the -1 prior keeps every gt inside its centre region whenever the region holds a point
    has_region = (full > -1).any(0)
    assert np.all(full[matched, np.arange(num_valid)][has_region] >= 0)
    assert has_region.sum() >= num_valid - 1


def test_no_ground_truths_all_negative():
    logits = jnp.zeros((GRID.num_points, 3))
    pred = jnp.zeros((GRID.num_points, 4))
    gt_to_point, point_to_gt = poto_assign(logits, pred, jnp.zeros((0, 4)), jnp.zeros((0,), jnp.int32),
                                           jnp.zeros((0,), bool), GRID)
    assert gt_to_point.shape == (0,)
    assert np.all(np.asarray(point_to_gt) == -1)


def test_all_padded_ground_truths_all_negative():
    rng = np.random.default_rng(5)
    gts, labels, _, pred, logits = make_scene(rng, 7, 7)
    gt_to_point, point_to_gt = _jitted()(logits, pred, gts, labels, np.zeros(7, bool))
    assert np.all(np.asarray(gt_to_point) == -1) and np.all(np.asarray(point_to_gt) == -1)


def reference_detr_cost(logits, pred, gts, labels, image_hw):
    """Full [N, G] CrowdHuman cost in float64: 2 focal-difference + 5 L1 on normalised cxcywh - 2 GIoU."""
    pred, gts = pred.astype(np.float64), gts.astype(np.float64)
    h, w = image_hw
    cost = np.empty((len(pred), len(gts)))
    for g, box in enumerate(gts):
        p = 1 / (1 + np.exp(-logits[:, labels[g]].astype(np.float64)))
        focal = -0.25 * (1 - p) ** 2 * np.log(p + 1e-12) + 0.75 * p ** 2 * np.log(1 - p + 1e-12)
        scale = np.array([w, h, w, h])
        pn, gn = pred / scale, box / scale
        to_cxcywh = lambda b: np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)
        l1 = np.abs(to_cxcywh(pn) - to_cxcywh(gn)).sum(-1)
        iw = np.clip(np.minimum(pred[:, 2], box[2]) - np.maximum(pred[:, 0], box[0]), 0, None)
        ih = np.clip(np.minimum(pred[:, 3], box[3]) - np.maximum(pred[:, 1], box[1]), 0, None)
        area_p = np.clip(pred[:, 2] - pred[:, 0], 0, None) * np.clip(pred[:, 3] - pred[:, 1], 0, None)
        union = np.maximum(area_p + (box[2] - box[0]) * (box[3] - box[1]) - iw * ih, 1e-7)
        ew = np.maximum(pred[:, 2], box[2]) - np.minimum(pred[:, 0], box[0])
        eh = np.maximum(pred[:, 3], box[3]) - np.minimum(pred[:, 1], box[1])
        enclose = np.maximum(ew * eh, 1e-7)
        giou = iw * ih / union - (enclose - union) / enclose
        cost[:, g] = 2 * focal + 5 * l1 - 2 * giou
    return cost


@pytest.mark.parametrize("image_hw,num_valid,max_boxes", [((256, 384), 20, 24), ((64, 64), 10, 12)])
def test_hungarian_cost_assignment_equals_scipy(image_hw, num_valid, max_boxes):
    from date_jax.assign.hungarian_cost import hungarian_assign
    grid = priors.point_grid(image_hw)
    rng = np.random.default_rng(num_valid)
    n = grid.num_points
    centre = rng.uniform(0, 1, (max_boxes, 2)) * [image_hw[1], image_hw[0]]
    size = rng.uniform(4, 120, (max_boxes, 2))
    gts = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    labels = rng.integers(0, 2, max_boxes).astype(np.int32)
    mask = np.arange(max_boxes) < num_valid
    pred = gts[rng.integers(0, num_valid, n)] + rng.normal(0, 10, (n, 4)).astype(np.float32)
    logits = rng.normal(-1, 2, (n, 2)).astype(np.float32)
    shape = np.array([image_hw[0] - 5, image_hw[1] - 9], np.int32)
    gt_to_point, point_to_gt = jax.device_get(jax.jit(hungarian_assign)(logits, pred, gts, labels, mask, shape))
    full = reference_detr_cost(logits, pred, gts[:num_valid], labels, shape)
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(full)
    matched = gt_to_point[:num_valid]
    assert np.all(gt_to_point[num_valid:] == -1) and len(set(matched.tolist())) == num_valid
    np.testing.assert_allclose(full[matched, np.arange(num_valid)].sum(), full[ref_rows, ref_cols].sum(),
                               rtol=1e-5)
    assert (point_to_gt >= 0).sum() == num_valid
