"""POTO on a realistic 800x1344 image (22,400 points) against scipy on the full N x G quality matrix built in numpy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from date_jax import priors
from date_jax.assign.poto import matched_outside_prior, poto_assign

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
        def to_cxcywh(b):
            return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
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


# ---- Which point each ground truth gets: matched indices against scipy on the full N x G matrix -----------------
#
# scipy's `linear_sum_assignment` (rows = points, maximize) works on the transposed G x N problem, one ground truth
# at a time in index order, by a shortest augmenting path search. A ground truth whose centre prior holds no point
# has a constant -1 column: its search stops at the first column it picks, which is the lowest-index free point
# (scipy scans the columns from the highest index down and lets a later free column replace an equal one). That is
# the point the reference gives it, usually the top-left P3 location. The scenes below use predictions that contain
# their own point, so every in-prior quality is > 0 and (almost surely) distinct: the in-prior part of the optimum is
# unique and must match scipy point for point; only the -1 points are free choices.

SMALL_HW = (192, 256)
SMALL_GRID = priors.point_grid(SMALL_HW)


@functools.lru_cache(maxsize=None)
def _jitted_small():
    return jax.jit(lambda *args: poto_assign(*args, grid=SMALL_GRID))


def generic_predictions(rng, grid, num_classes=3):
    """Boxes that strictly contain their own point (so IoU > 0 with every gt whose prior holds it), random logits."""
    extent = rng.uniform(3, 70, (grid.num_points, 4))
    pred = np.concatenate([grid.points - extent[:, :2], grid.points + extent[:, 2:]], 1).astype(np.float32)
    return pred, rng.normal(-1, 1.5, (grid.num_points, num_classes)).astype(np.float32)


def solve_both(gts, labels, pred, logits):
    """(date-jax gt_to_point [G], scipy gt_to_point [G], full quality [N, G]) for all-valid gts on SMALL_GRID."""
    mask = np.ones(len(gts), bool)
    ours, point_to_gt = jax.device_get(_jitted_small()(logits, pred, gts, labels, mask))
    prob = 1 / (1 + np.exp(-logits[:, labels].astype(np.float64)))
    full = reference_quality(SMALL_GRID.points, SMALL_GRID.strides, pred, prob, gts)
    rows, cols = scipy.optimize.linear_sum_assignment(full, maximize=True)
    reference = np.full(len(gts), -1)
    reference[cols] = rows
    inverse = np.full(SMALL_GRID.num_points, -1)
    inverse[ours] = np.arange(len(gts))
    np.testing.assert_array_equal(point_to_gt, inverse)
    np.testing.assert_allclose(full[ours, np.arange(len(gts))].sum(), full[reference, np.arange(len(gts))].sum(),
                               atol=1e-4)
    return ours, reference, full


# In (x1, y1) > (40, 40), away from the top row of P3 where scipy puts the empty-prior ground truths. Every point
# coordinate (4 + 8k, 8 + 16k, ...) is a multiple of 4, so a box inside one 4 px cell holds no point on any level.
BIG = [60, 50, 180, 150]
MEDIUM = [150, 100, 222, 171]
SMALL = [200, 60, 221, 79]
TINY_IN_BIG = [121, 101, 123.5, 103.5]          # inside BIG, at its centre: BIG's prior surrounds it
TINY_BY_MEDIUM = [173, 133, 175, 135.5]
TINY_ALONE = [93, 165, 94, 166]


@pytest.mark.parametrize("boxes", [
    [TINY_IN_BIG, BIG, MEDIUM],                               # the empty-prior gt is solved first
    [BIG, TINY_IN_BIG, MEDIUM, SMALL],                        # ... in the middle
    [BIG, MEDIUM, SMALL, TINY_BY_MEDIUM, TINY_IN_BIG],        # ... last, two of them
    [TINY_ALONE, BIG, TINY_IN_BIG, MEDIUM, TINY_BY_MEDIUM, SMALL],
])
def test_empty_prior_gt_gets_scipy_point(boxes):
    rng = np.random.default_rng(len(boxes))
    gts = np.asarray(boxes, np.float32)
    labels = rng.integers(0, 3, len(gts)).astype(np.int32)
    ours, reference, full = solve_both(gts, labels, *generic_predictions(rng, SMALL_GRID))
    empty = ~(full > -1).any(0)
    assert empty.any() and (~empty).any()
    # every gt's match is determined: in-prior ones by unique qualities, empty-prior ones by scipy's lowest free point
    np.testing.assert_array_equal(ours, reference)
    in_any_prior = (full > -1).any(1)
    assert not in_any_prior[ours[empty]].any(), "an empty-prior gt must not take a point beside another object"
    np.testing.assert_array_equal(np.sort(ours[empty]), np.arange(empty.sum()))


def test_duplicate_gts_tie():
    """Two identical gts (same box and label) have identical columns, so swapping their points keeps the total:
    only the pair's point set is determined. Two identical tiny gts each take the lowest free point in turn."""
    rng = np.random.default_rng(7)
    gts = np.asarray([BIG, TINY_IN_BIG, BIG, MEDIUM, TINY_IN_BIG, SMALL], np.float32)
    labels = np.asarray([1, 0, 1, 2, 0, 2], np.int32)
    ours, reference, full = solve_both(gts, labels, *generic_predictions(rng, SMALL_GRID))
    assert set(ours[[0, 2]]) == set(reference[[0, 2]]) and len(set(ours[[0, 2]])) == 2
    assert (full[ours[[0, 2]], [0, 2]] >= 0).all()
    np.testing.assert_array_equal(ours[[1, 3, 4, 5]], reference[[1, 3, 4, 5]])
    np.testing.assert_array_equal(ours[[1, 4]], [0, 1])


def crowded_scene(rng, num_gts):
    """Gts in two tight clusters (many overlapping priors, boxes from 1 to 60 px), a few duplicated, none near the
    top rows (y1 > 16): the filler points 0..G-1 lie outside every prior."""
    anchor = rng.uniform([70, 60], [SMALL_HW[1] - 70, SMALL_HW[0] - 50], (2, 2))
    centre = anchor[rng.integers(0, 2, num_gts)] + rng.normal(0, 9, (num_gts, 2))
    size = np.exp(rng.uniform(np.log(1), np.log(60), (num_gts, 2)))
    gts = np.concatenate([centre - size / 2, centre + size / 2], 1)
    gts[1::7] = gts[0::7][: len(gts[1::7])]
    labels = rng.integers(0, 3, num_gts).astype(np.int32)
    labels[1::7] = labels[0::7][: len(labels[1::7])]
    return np.clip(gts, [0, 17, 0, 17], [SMALL_HW[1], SMALL_HW[0]] * 2).astype(np.float32), labels


def test_crowded_scenes_match_scipy_where_determined():
    """Crowded clusters: some gts are pushed out of a prior whose points all serve others. The in-prior part of the
    optimum is unique up to swapping identical gts, so per group of identical gts (same box and label) the in-prior
    points and the number of gts outside must equal scipy's. The -1 points are interchangeable: date-jax gives them the
    lowest free points. scipy does the same for a gt with an empty prior (its search stops at the first column), but
    a gt pushed out by a later one is placed after scipy's search has reordered the columns it visited, and can get a
    higher free point. Hence: outside gts hold exactly the lowest points here; and where every outside gt has an
    empty prior, their indices equal scipy's."""
    pushed_scenes = exact_scenes = 0
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        gts, labels = crowded_scene(rng, 30)
        ours, reference, full = solve_both(gts, labels, *generic_predictions(rng, SMALL_GRID))
        assert not (full[: len(gts)] > -1).any(), "scene must keep the filler points outside every prior"
        columns = np.arange(len(gts))
        inside_ref = full[reference, columns] >= 0
        inside_ours = full[ours, columns] >= 0
        _, group = np.unique(np.concatenate([gts, labels[:, None]], 1), axis=0, return_inverse=True)
        for g in np.unique(group):
            members = group.ravel() == g
            np.testing.assert_array_equal(np.sort(ours[members & inside_ours]),
                                          np.sort(reference[members & inside_ref]))
        in_any_prior = (full > -1).any(1)
        assert not in_any_prior[ours[~inside_ours]].any() and not in_any_prior[reference[~inside_ref]].any()
        np.testing.assert_array_equal(np.sort(ours[~inside_ours]), np.arange((~inside_ours).sum()))
        empty = ~(full > -1).any(0)
        if (~inside_ref & ~empty).any():
            pushed_scenes += 1
        elif empty.any():
            exact_scenes += 1
            np.testing.assert_array_equal(ours[empty], reference[empty])
    assert pushed_scenes >= 2 and exact_scenes >= 2, (pushed_scenes, exact_scenes)


def test_pushed_out_gt_takes_lowest_free_point():
    """Two gts share a prior of one point (P3 (100, 140)); the second scores higher there and takes it. The first is
    pushed out: every free point is optimal for it. date-jax gives it the lowest free point, 0. scipy gives it point 1:
    its search visits the shared point first and moves column 0 to that point's place in its scan order, so column 1
    is the last free column it sees among the equal ones. Asserted: the shared point as scipy, the optimal total,
    and point 0 for the pushed-out gt."""
    gts = np.asarray([[97, 137, 103, 143], [97, 137, 103, 143], BIG], np.float32)
    labels = np.asarray([0, 1, 2], np.int32)
    rng = np.random.default_rng(3)
    pred, logits = generic_predictions(rng, SMALL_GRID)
    shared = int(np.flatnonzero((SMALL_GRID.points == [100, 140]).all(1))[0])
    logits[shared, :2] = [-4.0, 4.0]
    ours, reference, full = solve_both(gts, labels, pred, logits)
    assert (full[:, 0] > -1).sum() == 1 and full[shared, 1] > full[shared, 0] >= 0
    np.testing.assert_array_equal(ours[1:], reference[1:])
    assert ours[1] == shared and ours[0] == 0 and reference[0] not in (shared, ours[2])


def reference_outside_prior(gt_to_point, gts, mask, grid, radius=1.5):
    """Loop version: a valid, matched gt whose point is not strictly inside its centre region on the point's level."""
    out = np.zeros(len(gts), bool)
    for g, ((x1, y1, x2, y2), n) in enumerate(zip(gts.astype(np.float64), gt_to_point)):
        if not mask[g] or n < 0:
            continue
        (x, y), s = grid.points[n].astype(np.float64), float(grid.strides[n])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = max(cx - radius * s, x1) < x < min(cx + radius * s, x2) and max(cy - radius * s, y1) < y < min(
            cy + radius * s, y2)
        out[g] = not inside
    return out


def test_matched_outside_prior_counts_gts_off_their_prior():
    rng = np.random.default_rng(11)
    gts, labels = crowded_scene(rng, 30)
    pred, logits = generic_predictions(rng, SMALL_GRID)
    mask = np.arange(30) < 26
    gt_to_point = np.array(_jitted_small()(logits, pred, gts, labels, mask)[0])
    gt_to_point[3] = -1                                       # an unmatched valid gt is not counted
    got = np.asarray(matched_outside_prior(gt_to_point, gts, mask, SMALL_GRID, 1.5))
    expected = reference_outside_prior(gt_to_point, gts, mask, SMALL_GRID)
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < mask.sum() and not got[~mask].any()
    batched = np.asarray(matched_outside_prior(np.stack([gt_to_point] * 2), np.stack([gts] * 2),
                                               np.stack([mask, np.zeros(30, bool)]), SMALL_GRID, 1.5))
    np.testing.assert_array_equal(batched, [expected, np.zeros(30, bool)])
