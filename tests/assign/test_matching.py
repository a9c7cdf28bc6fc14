"""linear_sum_assignment against scipy: optimal totals on >= 1,000 random matrices, under jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from date_jax.assign.matching import assign_on_candidates, linear_sum_assignment

SHAPES = [(1, 9), (9, 1), (6, 6), (5, 12), (12, 5), (16, 20)]
KINDS = ["uniform", "ties", "range"]


def _random_costs(rng, kind, count, shape):
    if kind == "uniform":
        return rng.uniform(-1, 1, (count,) + shape)
    if kind == "ties":
        return rng.integers(0, 3, (count,) + shape).astype(np.float64)
    # large dynamic range: magnitudes from 1e-3 to 1e5 with random signs
    return rng.choice([-1.0, 1.0], (count,) + shape) * 10.0 ** rng.uniform(-3, 5, (count,) + shape)


def _check_pairs(rows, cols, shape):
    n, m = shape
    assert len(rows) == len(cols) == min(n, m)
    assert np.all(np.diff(rows) > 0), "rows must be strictly ascending like scipy's"
    assert len(set(cols.tolist())) == len(cols)
    assert rows.min() >= 0 and rows.max() < n and cols.min() >= 0 and cols.max() < m


@pytest.mark.parametrize("shape", SHAPES)
def test_vmapped_totals_equal_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    maximize = shape[0] > shape[1] or shape[0] == 6          # both senses, on every kind of shape
    costs = np.concatenate([_random_costs(rng, kind, 60, shape) for kind in KINDS]).astype(np.float32)
    rows, cols = jax.device_get(jax.jit(jax.vmap(lambda c: linear_sum_assignment(c, maximize=maximize)))(costs))
    for index, (cost, r, c) in enumerate(zip(costs.astype(np.float64), rows, cols)):
        _check_pairs(r, c, shape)
        ref_r, ref_c = scipy.optimize.linear_sum_assignment(cost, maximize=maximize)
        expected = cost[ref_r, ref_c].sum()
        tolerance = 1e-5 * np.abs(cost).max() * min(shape)
        assert abs(cost[r, c].sum() - expected) <= tolerance, (KINDS[index // 60], cost[r, c].sum(), expected)
    assert len(costs) == 180                                   # 6 shapes x 180 = 1,080 matrices in all


def test_jit_single_matrices_equal_scipy():
    rng = np.random.default_rng(1)
    for shape in [(1, 40), (40, 1), (17, 17), (6, 50), (50, 6)]:
        cost = rng.uniform(0, 10, shape).astype(np.float32)
        rows, cols = jax.jit(linear_sum_assignment)(cost)
        rows, cols = np.asarray(rows), np.asarray(cols)
        _check_pairs(rows, cols, shape)
        ref_r, ref_c = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[rows, cols].sum(), cost[ref_r, ref_c].sum(), rtol=1e-6)


def test_hand_example_and_empty():
    cost = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = linear_sum_assignment(cost)
    assert np.asarray(cols).tolist() == [1, 0, 2]           # 1 + 2 + 2 = 5 is the unique optimum
    rows, cols = linear_sum_assignment(np.zeros((0, 4)))
    assert rows.shape == cols.shape == (0,)
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros((2, 3, 4)))


def test_candidates_ignore_repeats_and_padded_rows():
    # Point 7 appears twice; gt 1 is padded; gt 0 and 2 both prefer point 7.
    candidates = jnp.array([7, 7, 3, 5], jnp.int32)
    cost = jnp.array([[-5.0, -5.0, -1.0, 0.0],
                      [-9.0, -9.0, -9.0, -9.0],
                      [-4.0, -4.0, 0.0, -2.0]])
    mask = jnp.array([True, False, True])
    gt_to_point, point_to_gt = assign_on_candidates(cost, candidates, mask, num_points=10)
    assert np.asarray(gt_to_point).tolist() == [7, -1, 5]    # -5 + -2 beats -4 + -1
    expected = np.full(10, -1)
    expected[7], expected[5] = 0, 2
    np.testing.assert_array_equal(point_to_gt, expected)


def test_candidates_fewer_points_than_ground_truths():
    # 4 valid gts compete for 3 distinct points: scipy's answer on the 4 x 3 matrix is the optimum of 3 pairs.
    rng = np.random.default_rng(3)
    cost = rng.uniform(-1, 1, (5, 4)).astype(np.float32)
    candidates = jnp.array([0, 1, 2, 1], jnp.int32)
    mask = jnp.array([True, True, False, True, True])
    gt_to_point, point_to_gt = assign_on_candidates(jnp.asarray(cost), candidates, mask, num_points=3)
    gt_to_point = np.asarray(gt_to_point)
    assert gt_to_point[2] == -1 and (gt_to_point >= 0).sum() == 3
    valid = cost[[0, 1, 3, 4]][:, :3]
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(valid)
    ours = sum(cost[g, p] for g, p in enumerate(gt_to_point) if p >= 0)
    np.testing.assert_allclose(ours, valid[ref_rows, ref_cols].sum(), rtol=1e-6)
    assert sorted(np.asarray(point_to_gt).tolist()) == sorted(g for g, p in enumerate(gt_to_point) if p >= 0)


def test_candidates_survive_non_finite_costs():
    cost = jnp.array([[jnp.nan, -1.0, jnp.inf], [-2.0, jnp.nan, 0.5]])
    gt_to_point, _ = jax.jit(assign_on_candidates, static_argnums=3)(cost, jnp.arange(3), jnp.ones(2, bool), 3)
    assert np.asarray(gt_to_point).tolist() == [1, 0]


def test_public_solver_terminates_on_non_finite_input():
    solve = jax.jit(linear_sum_assignment)
    rows, cols = solve(jnp.array([[jnp.inf, 1.0], [jnp.nan, jnp.inf]]))       # infeasible: still returns a matching
    assert np.asarray(rows).tolist() == [0, 1] and sorted(np.asarray(cols).tolist()) == [0, 1]
    rows, cols = solve(jnp.array([[jnp.inf, 1.0, 2.0], [0.0, jnp.inf, jnp.nan]]))  # forbidden entries are avoided
    assert np.asarray(cols).tolist() == [1, 0]
