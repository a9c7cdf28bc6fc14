"""Point grid, anchors and level bookkeeping of `date_jax.priors` against hand-computed values."""
import math

import numpy as np
import pytest

from date_jax import priors


def test_level_shapes_even_and_odd():
    assert priors.level_shapes((64, 64)) == ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))
    assert priors.level_shapes((800, 1344)) == ((100, 168), (50, 84), (25, 42), (13, 21), (7, 11))
    # odd: 65 -> 33 -> 17 -> 9 (P3) -> 5 -> 3 -> 2 -> 1 ; 97 -> 49 -> 25 -> 13 -> 7 -> 4 -> 2 -> 1
    assert priors.level_shapes((65, 97)) == ((9, 13), (5, 7), (3, 4), (2, 2), (1, 1))


def test_point_count_of_the_reference_size():
    assert priors.point_grid((800, 1344)).num_points == 16800 + 4200 + 1050 + 273 + 77


def test_points_of_a_64x64_image():
    grid = priors.point_grid((64, 64))
    sizes = [64, 16, 4, 1, 1]
    assert grid.num_points == sum(sizes)
    starts = np.cumsum([0] + sizes)
    # (first point, last point) per level: ((0 + 0.5) * s, ...) and ((W - 1 + 0.5) * s, ...)
    expected = [((4, 4), (60, 60)), ((8, 8), (56, 56)), ((16, 16), (48, 48)), ((32, 32), (32, 32)),
                ((64, 64), (64, 64))]
    for level, (first, last) in enumerate(expected):
        np.testing.assert_array_equal(grid.points[starts[level]], first)
        np.testing.assert_array_equal(grid.points[starts[level + 1] - 1], last)
        assert np.all(grid.strides[starts[level]:starts[level + 1]] == priors.STRIDES[level])
        assert np.all(grid.levels[starts[level]:starts[level + 1]] == level)
    # row-major inside P3: index i * 8 + j -> ((j + .5) * 8, (i + .5) * 8); e.g. i=2, j=5 -> 21 -> (44, 20)
    np.testing.assert_array_equal(grid.points[21], (44, 20))
    assert grid.points.dtype == np.float32


def test_points_of_a_non_square_image_are_row_major():
    grid = priors.point_grid((65, 97))
    h, w = grid.shapes[0]
    for index in (0, 1, w - 1, w, h * w - 1):
        i, j = divmod(index, w)
        np.testing.assert_array_equal(grid.points[index], ((j + 0.5) * 8, (i + 0.5) * 8))


def test_base_anchor_sizes():
    base = priors.base_anchors(8)
    assert base.shape == (9, 4)
    # ratio-major, scale-minor: a = ratio_idx * 3 + scale_idx; ratio = h / w; sqrt(w*h) = 8 * 4 * 2^(k/3).
    for ratio_idx, ratio in enumerate((0.5, 1.0, 2.0)):
        for k in range(3):
            x1, y1, x2, y2 = base[ratio_idx * 3 + k]
            w, h = x2 - x1, y2 - y1
            assert math.sqrt(w * h) == pytest.approx(32 * 2 ** (k / 3), rel=1e-9)
            assert h / w == pytest.approx(ratio, rel=1e-9)
            assert (x1 + x2, y1 + y2) == pytest.approx((0.0, 0.0))
    # hand-computed first anchor: w = 32 * sqrt(2) = 45.2548, h = 32 / sqrt(2) = 22.6274
    np.testing.assert_allclose(base[0], [-22.627417, -11.3137085, 22.627417, 11.3137085], rtol=1e-6)
    # square anchors of P7 at scale 2^(2/3): 128 * 4 * 1.5874 = 812.7
    np.testing.assert_allclose(priors.base_anchors(128)[5], np.array([-1, -1, 1, 1]) * 256 * 2 ** (2 / 3))


def test_anchor_order_is_location_major_then_anchor():
    anchors = priors.anchors((64, 64))
    shapes = priors.level_shapes((64, 64))
    counts = [h * w * 9 for h, w in shapes]
    assert anchors.shape == (sum(counts), 4) and anchors.dtype == np.float32
    start = 0
    for level, ((h, w), stride) in enumerate(zip(shapes, priors.STRIDES)):
        base = priors.base_anchors(stride)
        cells = [(0, 0, 0), (0, min(1, w - 1), 4), (h - 1, w - 1, 8), (h // 2, w - 1, 3)]
        for i, j, a in cells:
            row = anchors[start + (i * w + j) * 9 + a]
            # centre offset 0: the anchor of cell (i, j) is centred at (j * stride, i * stride)
            np.testing.assert_allclose(row, base[a] + [j * stride, i * stride, j * stride, i * stride], atol=1e-3)
        start += counts[level]
    # a hand value: P3, i = 1, j = 2, a = 4 (ratio 1, scale 2^(1/3)) -> centre (16, 8), side 32 * 1.259921
    half = 16 * 2 ** (1 / 3)
    np.testing.assert_allclose(anchors[(1 * 8 + 2) * 9 + 4], [16 - half, 8 - half, 16 + half, 8 + half], rtol=1e-6)


def test_anchor_count_matches_points():
    assert priors.num_anchors_per_point() == 9
    assert len(priors.anchors((65, 97))) == 9 * priors.point_grid((65, 97)).num_points


def test_fcos_regress_ranges():
    np.testing.assert_array_equal(priors.fcos_regress_ranges(),
                                  [[-1, 64], [64, 128], [128, 256], [256, 512], [512, 1e8]])
