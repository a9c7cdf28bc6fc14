"""The solver's phases against scipy: matched indices wherever the optimum is unique, ties, constant (empty-prior)
ground truths, the augmenting paths alone and after a truncated auction, and the trip counter."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from date_jax.assign import matching
from date_jax.assign.matching import assign_on_candidates, assign_on_candidates_with_trips, linear_sum_assignment


def unique_optimum(cost: np.ndarray) -> bool:
    """Whether scipy's optimum of cost [n, m] (n <= m) is the only one: banning any of its pairs costs strictly more."""
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    best = cost[rows, cols].sum()
    ban = np.abs(cost).max() * (cost.shape[0] + 1) + 1.0
    for r, c in zip(rows, cols):
        banned = cost.copy()
        banned[r, c] = ban
        rr, cc = scipy.optimize.linear_sum_assignment(banned)
        if banned[rr, cc].sum() <= best + 1e-9:
            return False
    return True


def empty_state(n: int, m: int):
    """Duals zero, nothing matched: the augmenting paths then solve the whole problem on their own."""
    return (jnp.zeros((n,)), jnp.zeros((m,)), jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32))


SOLVERS = {
    "default": lambda cost: matching._columns_of_rows(cost, cost.shape[0])[0],
    "no auction trips": lambda cost: matching._columns_of_rows(cost, cost.shape[0], auction_rounds=0)[0],
    "one auction trip": lambda cost: matching._columns_of_rows(cost, cost.shape[0], auction_rounds=1)[0],
    "paths only": lambda cost: matching._augment(cost, jnp.ones(cost.shape[0], bool),
                                                 empty_state(*cost.shape))[0][2],
}


@functools.lru_cache(maxsize=None)
def _batched(name):
    return jax.jit(jax.vmap(SOLVERS[name]))


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("shape", [(5, 5), (6, 9), (12, 30)])
def test_indices_equal_scipy_where_the_optimum_is_unique(name, shape):
    rng = np.random.default_rng(shape[0] * 7 + len(name))
    ties = rng.integers(0, 5, (30,) + shape).astype(np.float32)                 # small integers: many ties
    planted = rng.integers(1, 4, (20,) + shape).astype(np.float32)              # ties, but one zero-cost optimum
    for cost in planted:
        cost[np.arange(shape[0]), rng.permutation(shape[1])[:shape[0]]] = 0
    spread = rng.uniform(-1, 1, (20,) + shape).astype(np.float32)
    costs = np.concatenate([ties, planted, spread])
    cols = np.asarray(_batched(name)(costs))
    unique = []
    for cost, ours in zip(costs.astype(np.float64), cols):
        assert len(set(ours.tolist())) == shape[0] and ours.min() >= 0
        ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[np.arange(shape[0]), ours].sum(), cost[ref_rows, ref_cols].sum(), atol=1e-5)
        unique.append(unique_optimum(cost))
        if unique[-1]:
            np.testing.assert_array_equal(ours, ref_cols)
    assert all(unique[30:]), unique                                              # the comparison is not vacuous


def test_constant_rows_take_the_lowest_free_columns():
    # Rows 1 and 3 cost the same everywhere (a ground truth with an empty centre prior); the others have a unique
    # best column. The constant rows get the lowest-index columns the others leave free, in row order, like scipy.
    cost = np.full((5, 9), 1.0, np.float32)
    cost[0, 4], cost[2, 0], cost[4, 2] = -0.5, -0.7, -0.2
    for solve in SOLVERS.values():
        cols = np.asarray(jax.jit(solve)(jnp.asarray(cost)))
        assert cols.tolist() == [4, 1, 0, 3, 2]
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(cost)
    assert ref_cols.tolist() == [4, 1, 0, 3, 2]
    # scipy's orientation of POTO: points x ground truths, maximised; the same points.
    rows, cols = jax.jit(functools.partial(linear_sum_assignment, maximize=True))(-cost.T)
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(-cost.T, maximize=True)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(cols, ref_cols)


def test_constant_rows_displaced_together_stay_optimal():
    # Rows 0 and 1 are constant, row 2 wants column 0. scipy places rows in order (0 -> 0, 1 -> 1), then row 2's path
    # pushes row 0 on to column 2: (2, 1, 0). Here round 0 gives column 0 to row 2 (the highest bid), then rows 0 and 1
    # take the lowest free columns in row order: (1, 2, 0). Same total; the documented difference.
    cost = np.ones((3, 6), np.float32)
    cost[2, 0] = -0.9
    assert scipy.optimize.linear_sum_assignment(cost)[1].tolist() == [2, 1, 0]
    assert np.asarray(jax.jit(SOLVERS["default"])(jnp.asarray(cost))).tolist() == [1, 2, 0]


def poto_like_problem(rng, num_points, num_gts, empty):
    """A quality [N, G] in [0, 1] on small random priors (none among the first G points) and -1 elsewhere, with the
    ground truths in `empty` having no prior; the candidate list: the first G points (filler), then each prior."""
    quality = np.full((num_points, num_gts), -1.0)
    priors = []
    for g in range(num_gts):
        if g in empty:
            priors.append(np.zeros(0, np.int64))
            continue
        centre = rng.integers(num_gts, num_points - 6)
        points = np.arange(centre, centre + rng.integers(1, 7))                  # neighbouring gts' priors overlap
        quality[points, g] = rng.uniform(0, 1, len(points))
        priors.append(points)
    candidates = np.concatenate([np.arange(num_gts)] + priors)
    return quality, candidates


@pytest.mark.parametrize("seed", range(6))
def test_empty_prior_ground_truths_equal_scipy_on_the_full_matrix(seed):
    rng = np.random.default_rng(seed)
    num_points, num_gts, slots = 120, 14, 16
    empty = set(rng.choice(num_gts, 1 + seed % 4, replace=False).tolist())
    quality, candidates = poto_like_problem(rng, num_points, num_gts, empty)
    cost = np.zeros((slots, len(candidates)), np.float32)
    cost[:num_gts] = -quality[candidates].T
    cost[num_gts:] = rng.uniform(-5, 5, (slots - num_gts, len(candidates)))     # padded slots: anything
    mask = np.arange(slots) < num_gts
    gt_to_point, point_to_gt = jax.jit(assign_on_candidates, static_argnums=3)(
        jnp.asarray(cost), jnp.asarray(candidates, jnp.int32), jnp.asarray(mask), num_points)
    gt_to_point = np.asarray(gt_to_point)
    ref_points, ref_gts = scipy.optimize.linear_sum_assignment(quality, maximize=True)
    expected = np.full(slots, -1)
    expected[ref_gts] = ref_points
    np.testing.assert_array_equal(gt_to_point, expected)
    for g in empty:                                       # each empty-prior gt sits on a filler point
        assert gt_to_point[g] < num_gts


def test_trip_counter_counts_each_loop():
    # Both rows want column 0 equally: round 0 gives it to row 0; row 1 then takes column 1 in one auction trip,
    # or, with no auction trips allowed, in one scan of the augmenting-path loop.
    cost = jnp.array([[0.0, 1.0], [0.0, 1.0]])
    cols, trips = jax.jit(matching._columns_of_rows, static_argnums=(1, 2))(cost, 2, matching.AUCTION_ROUNDS)
    assert np.asarray(cols).tolist() == [0, 1] and np.asarray(trips).tolist() == [1, 0]
    cols, trips = jax.jit(matching._columns_of_rows, static_argnums=(1, 2))(cost, 2, 0)
    assert np.asarray(cols).tolist() == [0, 1] and np.asarray(trips).tolist() == [0, 1]
    # Three rows, all cheapest at column 0. Round 0 (outside the loops) gives it to row 0, the highest bid (second
    # best 5 against 1 and 1). Paths only: row 1 scans once (column 1 is free at 1); row 2 scans itself (column 1 at
    # 1, taken) and then row 1 (column 2 at 2 is the nearest free one): 3 scans. Auction: row 1 outbids row 2 for
    # column 1 (second bests 5 and 2), then row 2 takes column 2: 2 trips.
    cost = jnp.array([[0.0, 5.0, 9.0], [0.0, 1.0, 9.0], [0.0, 1.0, 2.0]])
    cols, trips = jax.jit(matching._columns_of_rows, static_argnums=(1, 2))(cost, 3, 0)
    assert np.asarray(cols).tolist() == [0, 1, 2] and np.asarray(trips).tolist() == [0, 3]
    cols, trips = jax.jit(matching._columns_of_rows, static_argnums=(1, 2))(cost, 3, matching.AUCTION_ROUNDS)
    assert np.asarray(cols).tolist() == [0, 1, 2] and np.asarray(trips).tolist() == [2, 0]


def test_trips_are_per_example_under_vmap():
    rng = np.random.default_rng(11)
    costs = rng.integers(0, 4, (6, 7, 40)).astype(np.float32)
    masks = np.arange(7)[None, :] < np.array([0, 1, 3, 5, 7, 7])[:, None]
    solve = jax.jit(lambda c, k: assign_on_candidates_with_trips(c, jnp.arange(40), k, 40))
    batched = jax.jit(jax.vmap(lambda c, k: assign_on_candidates_with_trips(c, jnp.arange(40), k, 40)))
    _, _, trips = batched(costs, masks)
    alone = np.stack([np.asarray(solve(c, k)[2]) for c, k in zip(costs, masks)])
    np.testing.assert_array_equal(trips, alone)
    assert trips[0].tolist() == [0, 0]                    # no valid ground truth: neither loop runs
