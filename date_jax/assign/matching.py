"""Exact linear assignment inside jit, and the candidate-restricted form used by the one-to-one assigners.

`linear_sum_assignment` has scipy's meaning for any finite 2-D cost matrix: min(N, M) (row, column) pairs, rows
ascending, minimal (or maximal) total. The solver is the shortest-augmenting-path method (Jonker-Volgenant style
Dijkstra on reduced costs with row/column duals, as in scipy) over the rows of the small side: an outer
`lax.while_loop` adds one row at a time, an inner one grows the shortest-path tree, a third flips the path. Every
step is a vector operation over the columns, so it is jittable and vmappable with static shapes; the outer loop runs
over a dynamic number of rows, so padded rows cost nothing.
`optax.assignment.hungarian_algorithm` was evaluated first: equally exact, but on this 2-core CPU it takes ~0.12 s
for eight vmapped uniform-random 100 x 4,600 problems where this solver takes ~0.04 s (both ~0.07 s on POTO's mostly
constant costs), and it must process every (also padded) row.

`assign_on_candidates` solves a ground truth x candidate-point problem whose candidate list may repeat points (the
union of per-ground-truth candidate sets): repeated points and non-finite entries are made strictly worse than any
real entry with a finite bound; padded ground truths are moved behind the valid ones and never enter the solver.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _augment_row(cost: Array, cur_row: Array, state: tuple[Array, ...]) -> tuple[Array, ...]:
    """Match free row `cur_row` of cost [n, m] by one shortest augmenting path; updates duals, matching, trips [3]."""
    u, v, col4row, row4col, trips = state
    n, m = cost.shape

    def search(carry):
        shortest, path, done_cols, done_rows, min_val, row, _ = carry
        done_rows = done_rows.at[row].set(True)
        reduced = min_val + cost[row] - u[row] - v
        better = ~done_cols & (reduced < shortest)
        path = jnp.where(better, row, path)
        shortest = jnp.where(better, reduced, shortest)
        open_costs = jnp.where(done_cols, jnp.inf, shortest)
        low = jnp.min(open_costs)
        ties = (open_costs == low) & ~done_cols           # ~done_cols: progress even on non-finite input
        free_ties = ties & (row4col < 0)                  # prefer a free column among equals: shorter paths
        col = jnp.where(jnp.any(free_ties), jnp.argmax(free_ties), jnp.argmax(ties)).astype(jnp.int32)
        done_cols = done_cols.at[col].set(True)
        owner = row4col[col]
        sink = jnp.where(owner < 0, col, -1)
        return shortest, path, done_cols, done_rows, low, jnp.where(owner < 0, row, owner), sink

    init = (jnp.full((m,), jnp.inf, cost.dtype), jnp.full((m,), -1, jnp.int32), jnp.zeros((m,), bool),
            jnp.zeros((n,), bool), jnp.zeros((), cost.dtype), cur_row, jnp.int32(-1))
    shortest, path, done_cols, done_rows, min_val, _, sink = jax.lax.while_loop(lambda c: c[6] < 0, search, init)
    search_trips = jnp.sum(done_cols).astype(jnp.int32)    # one column is settled per trip

    others = done_rows & (jnp.arange(n) != cur_row)
    u = jnp.where(others, u + min_val - shortest[jnp.maximum(col4row, 0)], u).at[cur_row].add(min_val)
    v = jnp.where(done_cols, v - (min_val - shortest), v)

    def flip(carry):
        col, col4row, row4col, _, count = carry
        row = path[col]
        previous = col4row[row]
        return previous, col4row.at[row].set(col), row4col.at[col].set(row), row == cur_row, count + 1

    _, col4row, row4col, _, flip_trips = jax.lax.while_loop(
        lambda c: ~c[3], flip, (sink, col4row, row4col, jnp.bool_(False), jnp.int32(0)))
    return u, v, col4row, row4col, trips + jnp.stack([jnp.int32(1), search_trips, flip_trips])


def _columns_of_rows(cost: Array, num_rows: Array | int) -> tuple[Array, Array]:
    """Optimal column [n] int32 of the first `num_rows` rows of a finite cost [n, m], n <= m (others: -1), trips [3]."""
    n, m = cost.shape
    state = (jnp.zeros((n,), cost.dtype), jnp.zeros((m,), cost.dtype), jnp.full((n,), -1, jnp.int32),
             jnp.full((m,), -1, jnp.int32), jnp.zeros((3,), jnp.int32))
    _, (_, _, col4row, _, trips) = jax.lax.while_loop(
        lambda c: c[0] < num_rows, lambda c: (c[0] + 1, _augment_row(cost, c[0], c[1])), (jnp.int32(0), state))
    return col4row, trips


def linear_sum_assignment(cost: Array, maximize: bool = False) -> tuple[Array, Array]:
    """scipy-compatible assignment of a cost [N, M] -> (rows [K], cols [K]) int32, K = min(N, M), rows sorted.

    Non-finite entries are treated as forbidden (avoided whenever an all-finite assignment exists)."""
    cost = jnp.asarray(cost)
    if cost.ndim != 2:
        raise ValueError(f"linear_sum_assignment expects a 2-D cost matrix, got shape {cost.shape}; "
                         "vmap over leading batch axes instead.")
    n, m = cost.shape
    if n == 0 or m == 0:
        empty = jnp.zeros((0,), jnp.int32)
        return empty, empty
    cost = cost.astype(jnp.promote_types(cost.dtype, jnp.float32))
    if maximize:
        cost = -cost
    # Non-finite entries are forbidden: a finite bound above any all-finite assignment's total keeps the loops exact.
    finite = jnp.isfinite(cost)
    pairs = min(n, m)
    bound = (2 * pairs + 1) * (jnp.max(jnp.where(finite, jnp.abs(cost), 0.0)) + 1.0)
    cost = jnp.where(finite, cost, bound)
    if n <= m:
        return jnp.arange(n, dtype=jnp.int32), _columns_of_rows(cost, n)[0]
    row_of_column, _ = _columns_of_rows(cost.T, m)
    order = jnp.argsort(row_of_column)
    return row_of_column[order], order.astype(jnp.int32)


def matching_inputs(cls_logits: Array, pred_boxes: Array, gt_labels: Array) -> tuple[Array, Array, Array]:
    """Predictions detached from the graph (logits [N, C], boxes [N, 4]) and gt labels [G] clipped to the C classes."""
    labels = jnp.clip(gt_labels, 0, cls_logits.shape[1] - 1)
    return jax.lax.stop_gradient(cls_logits), jax.lax.stop_gradient(pred_boxes), labels


def unmatched(num_points: int) -> tuple[Array, Array]:
    """The assignment of an image without ground-truth slots: (gt_to_point [0], point_to_gt [N] all -1)."""
    return jnp.zeros((0,), jnp.int32), jnp.full((num_points,), -1, jnp.int32)


def first_slots(candidates: Array, num_points: int) -> Array:
    """Position of each point's first occurrence in candidate ids [K] -> [N] int32 (K where the point is absent)."""
    num_candidates = candidates.shape[0]
    return jnp.full((num_points,), num_candidates, jnp.int32).at[candidates].min(
        jnp.arange(num_candidates, dtype=jnp.int32))


def assign_on_candidates_with_trips(cost: Array, candidates: Array, gt_mask: Array,
                                    num_points: int) -> tuple[Array, Array, Array]:
    """`assign_on_candidates` plus the trips [3] int32 its while loops made (outer rows, search steps, path flips)."""
    num_gts, num_candidates = cost.shape
    repeated = first_slots(candidates, num_points)[candidates] != jnp.arange(num_candidates)
    usable = ~repeated[None, :] & jnp.isfinite(cost)
    # A finite bound above every real entry: an optimum never uses one while a real column is free.
    bound = 2.0 * jnp.max(jnp.where(usable & gt_mask[:, None], jnp.abs(cost), 0.0)) + 1.0
    cost = jnp.where(usable, cost, bound)
    if num_candidates < num_gts:                      # fewer points than slots: bound-cost columns keep n <= m
        cost = jnp.concatenate([cost, jnp.full((num_gts, num_gts - num_candidates), bound, cost.dtype)], axis=1)
    valid_first = jnp.argsort(~gt_mask, stable=True)
    columns, trips = _columns_of_rows(cost[valid_first], jnp.sum(gt_mask))
    column = jnp.zeros((num_gts,), jnp.int32).at[valid_first].set(columns)
    safe = jnp.clip(column, 0, num_candidates - 1)
    matched = gt_mask & (column >= 0) & (column < num_candidates) & ~repeated[safe]
    gt_to_point = jnp.where(matched, candidates[safe], -1).astype(jnp.int32)
    scatter_at = jnp.where(matched, gt_to_point, num_points)
    point_to_gt = jnp.full((num_points,), -1, jnp.int32).at[scatter_at].set(
        jnp.arange(num_gts, dtype=jnp.int32), mode="drop")
    return gt_to_point, point_to_gt, trips


def assign_on_candidates(cost: Array, candidates: Array, gt_mask: Array, num_points: int) -> tuple[Array, Array]:
    """Minimise cost [G, K] over candidate point ids [K] (repeats allowed) -> (gt_to_point [G], point_to_gt [N]).

    Valid ground truths are all matched when the candidates hold at least as many distinct points. Unmatched and
    padded ground truths get -1 in `gt_to_point`; background points get -1 in `point_to_gt`.
    """
    gt_to_point, point_to_gt, _ = assign_on_candidates_with_trips(cost, candidates, gt_mask, num_points)
    return gt_to_point, point_to_gt
