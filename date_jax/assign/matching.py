"""Exact linear assignment inside jit, and the candidate-restricted form used by the one-to-one assigners.

`linear_sum_assignment` has scipy's meaning for any finite 2-D cost matrix: min(N, M) (row, column) pairs, rows
ascending, minimal (or maximal) total. It solves over the rows of the small side (n <= m) and keeps row duals u and
column duals v with the optimality conditions of the rectangular problem (docs/spec.md §D.2): c - u - v >= 0 on every
matched row, = 0 on its pair, v <= 0, and v = 0 on every free column. Two phases, each a `lax.while_loop`, one after
the other (never nested, so under vmap a batch makes the sum over the loops of its slowest example's trips):
1. Auction without slack (Jonker-Volgenant's reduction steps, all rows at once): every free row bids for its
   cheapest column at reduced cost, the price at which its second-cheapest becomes as good; each column goes to its
   highest bidder and its old owner becomes free. A first round where every row bids runs before the loop; then each
   trip lets the first `AUCTION_WIDTH` free rows bid, while a bid is possible, at most `AUCTION_ROUNDS` trips. The
   conditions above hold after every round, so what is matched is part of an optimum of the rows matched so far.
2. Shortest augmenting paths (Dijkstra on reduced costs, as in scipy) for the rows still free, in index order: one
   trip scans one row of the path tree; the trip that reaches a free column also updates the duals, flips the path
   (pointer doubling, no loop) and starts the next free row.
Ties: a row takes a free column before a matched one at the same reduced cost, then the lowest index, in both
phases; so a row whose costs are all equal (an empty centre prior) takes the lowest-index column left free when it
is placed. When several such rows compete with another row for the same low columns, which of them takes which
column can differ from scipy's (equally optimal).
Every step is a vector operation, so the solver is jittable and vmappable with static shapes; padded rows never
bid or scan. `optax.assignment.hungarian_algorithm` was evaluated first: equally exact, slower here, and it must
process every (also padded) row.

`assign_on_candidates` solves a ground truth x candidate-point problem whose candidate list may repeat points (the
union of per-ground-truth candidate sets): repeated points and non-finite entries are made strictly worse than any
real entry with a finite bound; padded ground truths are moved behind the valid ones and never enter the solver.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
AUCTION_ROUNDS = 64      # most auction trips before the augmenting paths take over
AUCTION_WIDTH = 32       # free rows bidding per auction trip (the first round lets every row bid)


def _bids(cost_rows: Array, bidding: Array, v: Array, row4col: Array) -> tuple[Array, ...]:
    """Auction bids of rows [F] (cost rows [F, m], mask `bidding` [F]) -> (column, new price, bid made) [F] each.

    A row bids for its cheapest column at reduced cost c - v (a free one among equals, then the lowest index) the
    price at which its second-cheapest column becomes as good (u2 - u1 below the current one). It bids only if that
    column is free or the price drops: a matched column at a tied minimum would only change hands."""
    m = cost_rows.shape[1]
    reduced = cost_rows - v
    lowest = jnp.min(reduced, axis=1)
    at_min = reduced == lowest[:, None]
    free_at_min = at_min & (row4col < 0)
    col = jnp.where(jnp.any(free_at_min, axis=1), jnp.argmax(free_at_min, axis=1),
                    jnp.argmax(at_min, axis=1)).astype(jnp.int32)
    second = jnp.min(jnp.where(jnp.arange(m) == col[:, None], jnp.inf, reduced), axis=1)
    chosen = jnp.take_along_axis(cost_rows, col[:, None], axis=1)[:, 0]
    price = jnp.minimum(v[col], jnp.where(jnp.isfinite(second), chosen - second, v[col]))
    return col, price, bidding & ((row4col[col] < 0) | (second > lowest))


def _award(cost_rows: Array, rows: Array, bids: tuple[Array, ...], state: tuple[Array, ...]) -> tuple[Array, ...]:
    """Give each bid-for column to its highest bidder (lowest price, then lowest row); its old owner becomes free.

    Duals stay valid: the winner's u is set tight at the new price, prices only fall, and only columns that stay
    matched fall below 0 (docs/spec.md §D.2)."""
    u, v, col4row, row4col = state
    n, m = col4row.shape[0], row4col.shape[0]
    col, price, bid = bids
    best = jnp.full((m,), jnp.inf, v.dtype).at[jnp.where(bid, col, m)].min(price, mode="drop")
    first = jnp.full((m,), n, jnp.int32).at[jnp.where(bid & (price == best[col]), col, m)].min(rows, mode="drop")
    wins = bid & (first[col] == rows)
    owner = row4col[col]
    col4row = col4row.at[jnp.where(wins & (owner >= 0), owner, n)].set(-1, mode="drop")
    col4row = col4row.at[jnp.where(wins, rows, n)].set(col, mode="drop")
    row4col = row4col.at[jnp.where(wins, col, m)].set(rows, mode="drop")
    v = v.at[jnp.where(wins, col, m)].set(price, mode="drop")
    chosen = jnp.take_along_axis(cost_rows, col[:, None], axis=1)[:, 0]
    u = u.at[jnp.where(wins, rows, n)].set(chosen - v[col], mode="drop")
    return u, v, col4row, row4col


def _auction(cost: Array, valid: Array, max_rounds: int, width: int) -> tuple[tuple[Array, ...], Array]:
    """Exact warm start of cost [n, m]: Jacobi auction rounds without slack -> (u, v, col4row, row4col), rounds.

    Round 0 (every valid row bids: row reduction) runs outside any loop; then up to `max_rounds` loop trips, each
    letting the first `width` free rows bid, while some bid is possible. Rows still free are left to the augmenting
    paths; the duals satisfy the optimality conditions on every matched row."""
    n, m = cost.shape
    state = (jnp.zeros((n,), cost.dtype), jnp.zeros((m,), cost.dtype), jnp.full((n,), -1, jnp.int32),
             jnp.full((m,), -1, jnp.int32))
    rows = jnp.arange(n, dtype=jnp.int32)
    state = _award(cost, rows, _bids(cost, valid, state[1], state[3]), state)

    def free_bids(state):
        rows = jnp.nonzero(valid & (state[2] < 0), size=width, fill_value=-1)[0].astype(jnp.int32)
        cost_rows = cost[jnp.maximum(rows, 0)]
        return rows, cost_rows, _bids(cost_rows, rows >= 0, state[1], state[3])

    def round_(carry):
        state, (rows, cost_rows, bids), count = carry
        state = _award(cost_rows, rows, bids, state)
        return state, free_bids(state), count + 1

    state, _, rounds = jax.lax.while_loop(lambda c: jnp.any(c[1][2][2]) & (c[2] < max_rounds), round_,
                                          (state, free_bids(state), jnp.int32(0)))
    return state, rounds


def _flip(path: Array, col4row: Array, row4col: Array, sink: Array, root: Array, in_tree: Array,
          steps: int) -> tuple[Array, Array]:
    """Augment along the tree path root -> sink: (col4row [n], row4col [m]) with every path row moved one column on.

    The path's rows are the ancestors of the sink's row, found by pointer doubling in `steps` >= log2(n) unrolled
    gathers (no loop): row r's parent is the row whose scan reached r's matched column."""
    n, m = col4row.shape[0], row4col.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    parent = jnp.where(in_tree & (rows != root), path[jnp.maximum(col4row, 0)], rows)
    last = path[sink]
    on_path, jump = rows == last, parent
    for _ in range(steps):                     # invariant: ancestors at distance < 2^k marked, jump = 2^k-th ancestor
        on_path = on_path | jnp.zeros((n,), bool).at[jnp.where(on_path, jump, n)].set(True, mode="drop")
        jump = jump[jump]
    moved = col4row.at[jnp.where(on_path & (rows != root), parent, n)].set(col4row, mode="drop").at[last].set(sink)
    return moved, row4col.at[jnp.where(on_path, moved, m)].set(rows, mode="drop")


def _augment(cost: Array, valid: Array, state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Array]:
    """Match every free valid row of cost [n, m] by shortest augmenting paths, one tree step per loop trip.

    Rows are taken in index order; a trip scans one row of the current tree (Dijkstra on reduced costs, a free
    column preferred among equals, then the lowest index), and the trip that reaches a free column also updates the
    duals, flips the path and starts the next free row, so the loop's trips are the total number of scans."""
    n, m = cost.shape
    steps = max(1, (n - 1).bit_length())
    arange_n = jnp.arange(n)

    def fresh(col4row):
        free = valid & (col4row < 0)
        root = jnp.argmax(free).astype(jnp.int32)
        search = (jnp.full((m,), jnp.inf, cost.dtype), jnp.full((m,), -1, jnp.int32), jnp.zeros((m,), bool),
                  jnp.zeros((n,), bool), jnp.zeros((), cost.dtype), root)
        return jnp.any(free), root, search

    def scan(carry):
        (u, v, col4row, row4col), (more, root, search), count = carry
        shortest, path, done_cols, done_rows, min_val, row = search
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
        found = owner < 0
        # The trip that reaches a free column: duals from the tree's distances, then the path flip.
        others = done_rows & (arange_n != root)
        new_u = jnp.where(others, u + low - shortest[jnp.maximum(col4row, 0)], u).at[root].add(low)
        new_v = jnp.where(done_cols, v - (low - shortest), v)
        new_col4row, new_row4col = _flip(path, col4row, row4col, col, root, done_rows, steps)
        following = fresh(new_col4row)
        keep = (more, root, (shortest, path, done_cols, done_rows, low, owner))
        def pick(a, b):
            return jax.tree.map(lambda x, y: jnp.where(found, x, y), a, b)
        return (pick((new_u, new_v, new_col4row, new_row4col), (u, v, col4row, row4col)), pick(following, keep),
                count + 1)

    state, _, trips = jax.lax.while_loop(lambda c: c[1][0], scan, (state, fresh(state[2]), jnp.int32(0)))
    return state, trips


def _columns_of_rows(cost: Array, num_rows: Array | int,
                     auction_rounds: int = AUCTION_ROUNDS) -> tuple[Array, Array]:
    """Optimal column [n] int32 of the first `num_rows` rows of a finite cost [n, m], n <= m (others: -1), and the
    trips [2] int32 of the solver's two loops (auction rounds, augmenting-path scans), which run one after the other."""
    n, m = cost.shape
    valid = jnp.arange(n) < num_rows
    state, rounds = _auction(cost, valid, auction_rounds, min(n, AUCTION_WIDTH))
    (_, _, col4row, _), scans = _augment(cost, valid, state)
    return col4row, jnp.stack([rounds, scans])


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
    """`assign_on_candidates` plus the trips [2] int32 of its two sequential while loops (auction rounds, scans)."""
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
