"""Sequential depth of the one-to-one assignment: while-loop trips per train step, and their predicted GPU time.

On a GPU every trip of a `lax.while_loop` costs a kernel launch and a device->host read of the loop predicate
(order 5-20 us); the work inside a trip is a few vector operations and does not matter at these sizes. A train step
runs the assigner vmapped over the examples of a device's batch, so each of the solver's loops runs until the slowest
example has finished it: the step's trips are the sum over the solver's loops of the maximum over the batch.

Counting. The real per-image assigners (`poto.poto_assign`, `hungarian_cost.hungarian_assign`) run with their call of
`matching.assign_on_candidates` replaced by `matching.assign_on_candidates_with_trips`, which solves the same problem
and also returns the trips of each of its loops; every image is solved on its own and the batch's step combines them
(sum over loops of the max over images, exact for loops that run one after the other).

Scenes (image size and `max_boxes` as in the configs; predictions random but plausible):
- ground-truth counts per image: COCO: 99 % negative binomial (r = 1.5, mu = 6.08) kept within 1..50, 1 % uniform on
  51..90 (mean 7.3, 1 % above 50, max 90), 800x1344 grid (22,400 points, strides 8..128), image 800x1333, 80 classes,
  max_boxes 100. CrowdHuman: 98 % negative binomial (r = 1.5, mu = 18.6) within 1..100, 2 % uniform on 101..350
  (mean 23), 800x1408 grid (23,463 points), image 800x1400, 1 class, max_boxes 400.
- boxes: COCO: sqrt(area) log-normal (median 55 px, sigma 1.0), aspect h/w log-normal (sigma 0.5), half of the
  centres uniform, half beside an earlier box. CrowdHuman: full bodies, height log-normal (median 120 px, sigma 0.7),
  width 0.41 h, in 1-3 crowds (horizontal bands) that overlap heavily.
- predictions: a point inside ground truths predicts the smallest of them, jittered by 10 % of its size; other points
  predict a random box around themselves (4 strides, log-normal). Logits N(-4, 1.5), +N(3, 1) on the class of the box
  a point predicts.

Step-time reference: the predicted DATE-R50-F train step (800x1344, bf16) of `benchmarks/accelerator_model.py` at
the same per-device batch, read from its JSON, for each of `--devices`: "realistic" (40 % of peak FLOP/s) and
"compute" (FLOPs / peak, the fastest the step can be, so the largest share). Target: predicted assignment time <= 5 %
of the step. `--rescore` recomputes the shares of the rows already in `--out` (after a new step prediction) without
counting trips again.

    python -m benchmarks.assignment_depth [--datasets coco crowdhuman] [--batches 2 16] [--steps 100 25]
        [--matchers poto hungarian] [--seed 0] [--us-per-trip 10] [--out benchmarks/results/assignment_depth.json]
        [--step-model benchmarks/results/accelerator_model.json] [--devices "H100 SXM" H200] [--rescore]
"""
from __future__ import annotations

import argparse
import json
import pathlib
from unittest import mock

import jax
import numpy as np

from date_jax import priors
from date_jax.assign import hungarian_cost, matching, poto

DATASETS = {
    "coco": dict(grid_hw=(800, 1344), image_hw=(800, 1333), num_classes=80, max_boxes=100,
                 body=(1.5, 6.08, 50), tail=(0.01, 51, 90)),
    "crowdhuman": dict(grid_hw=(800, 1408), image_hw=(800, 1400), num_classes=1, max_boxes=400,
                       body=(1.5, 18.6, 100), tail=(0.02, 101, 350)),
}
STEP_MODEL = "benchmarks/results/accelerator_model.json"
DEVICES = ("H100 SXM", "H200")
PREDICTIONS = {"realistic": "realistic_s", "compute": "compute_s"}


def sample_counts(rng: np.random.Generator, dataset: str, size: int) -> np.ndarray:
    """Ground-truth counts of `size` images: a negative binomial body within 1..hi plus a uniform tail -> [size]."""
    (r, mu, hi), (share, low, top) = DATASETS[dataset]["body"], DATASETS[dataset]["tail"]
    counts = np.empty(size, np.int64)
    for i in range(size):
        if rng.random() < share:
            counts[i] = rng.integers(low, top + 1)
            continue
        count = 0
        while not 1 <= count <= hi:
            count = rng.negative_binomial(r, r / (r + mu))
        counts[i] = count
    return counts


def sample_boxes(rng: np.random.Generator, dataset: str, count: int, image_hw: tuple[int, int]) -> np.ndarray:
    """`count` ground-truth boxes xyxy [count, 4] float32 inside the image, COCO-like or crowds of people."""
    h, w = image_hw
    if dataset == "coco":
        side = np.clip(np.exp(rng.normal(np.log(55), 1.0, count)), 4, 1100)
        aspect = np.exp(rng.normal(0, 0.5, count))
        size = np.stack([side / np.sqrt(aspect), side * np.sqrt(aspect)], 1)
        centre = rng.uniform([0, 0], [w, h], (count, 2))
        for i in range(1, count):
            if rng.random() < 0.5:
                j = rng.integers(0, i)
                centre[i] = centre[j] + rng.normal(0, 1, 2) * size[j]
    else:
        height = np.clip(np.exp(rng.normal(np.log(120), 0.7, count)), 12, 780)
        size = np.stack([0.41 * height * np.exp(rng.normal(0, 0.15, count)), height], 1)
        crowds = rng.integers(1, 4)
        band = rng.uniform(0.25 * h, 0.75 * h, crowds)
        spread = rng.uniform(0.15 * w, 0.6 * w, crowds)
        middle = rng.uniform(0.2 * w, 0.8 * w, crowds)
        member = rng.integers(0, crowds, count)
        centre = np.stack([middle[member] + rng.normal(0, 1, count) * spread[member],
                           band[member] + rng.normal(0, 0.25, count) * height], 1)
    centre = np.clip(centre, 0, [w, h])
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.astype(np.float32)


def make_image(rng: np.random.Generator, dataset: str, grid: priors.PointGrid, count: int) -> dict:
    """One image's padded ground truths (max_boxes slots) and the network outputs of a plausible model."""
    spec = DATASETS[dataset]
    n, slots = grid.num_points, spec["max_boxes"]
    boxes = sample_boxes(rng, dataset, count, spec["image_hw"])
    labels = rng.integers(0, spec["num_classes"], count).astype(np.int32)
    points = grid.points
    inside = np.all((points[:, None] > boxes[None, :, :2]) & (points[:, None] < boxes[None, :, 2:]), -1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], 1)
    owner = np.argmin(np.where(inside, area[None], np.inf), 1)
    has_owner = inside.any(1)
    target = boxes[owner]
    jitter = rng.normal(0, 0.1, (n, 4)) * np.tile(target[:, 2:] - target[:, :2], 2)
    half = 2 * grid.strides[:, None] * np.exp(rng.normal(0, 0.5, (n, 2)))
    random_boxes = np.concatenate([points - half, points + half], 1)
    pred = np.where(has_owner[:, None], target + jitter, random_boxes).astype(np.float32)
    logits = rng.normal(-4, 1.5, (n, spec["num_classes"])).astype(np.float32)
    logits[has_owner, labels[owner[has_owner]]] += rng.normal(3, 1, has_owner.sum()).astype(np.float32)
    pad = slots - count
    return dict(logits=logits, pred=pred,
                boxes=np.concatenate([boxes, np.zeros((pad, 4), np.float32)]),
                labels=np.concatenate([labels, np.zeros(pad, np.int32)]),
                mask=np.arange(slots) < count,
                image_shape=np.array(spec["image_hw"], np.int32))


def trip_counter(matcher: str, grid: priors.PointGrid):
    """Jitted per-image assigner returning the solver's trips [loops] (the real assigner, counting solver inside)."""
    if matcher == "poto":
        def assign(d):
            return poto.poto_assign(d["logits"], d["pred"], d["boxes"], d["labels"], d["mask"], grid)
        module = poto
    else:
        def assign(d):
            return hungarian_cost.hungarian_assign(d["logits"], d["pred"], d["boxes"], d["labels"], d["mask"],
                                                   d["image_shape"])
        module = hungarian_cost

    def counted(d):
        with mock.patch.object(module, "assign_on_candidates", matching.assign_on_candidates_with_trips):
            return assign(d)[2]
    return jax.jit(counted)


def summary(trips: list[int], us_per_trip: float) -> dict:
    """Trips per step (mean, median, p90, max) and their predicted time (mean, max) in ms."""
    trips = np.asarray(trips)
    return dict(mean=float(trips.mean()), median=float(np.median(trips)), p90=float(np.percentile(trips, 90)),
                max=int(trips.max()), mean_ms=trips.mean() * us_per_trip / 1e3, max_ms=trips.max() * us_per_trip / 1e3)


def predicted_step_ms(path: str, devices: list[str], batches: list[int]) -> dict[str, dict[str, dict[str, float]]]:
    """{device: {batch: {'realistic' | 'compute': ms}}} of the predicted train step, from accelerator_model's JSON."""
    file = pathlib.Path(path)
    if not file.exists():
        raise SystemExit(f"error: {path} not found; run `python benchmarks/accelerator_model.py measure --kind train "
                         f"--batch B` for B in {batches} first, or pass --step-model")
    train = json.loads(file.read_text()).get("derived", {}).get("train", {})
    missing = [(d, b) for d in devices for b in batches if str(b) not in train.get(d, {})]
    if missing:
        raise SystemExit(f"error: {path} has no predicted train step for (device, batch) {missing}; measure those "
                         f"batches with benchmarks/accelerator_model.py or pick --devices from {sorted(train)}")
    return {d: {str(b): {name: train[d][str(b)][key] * 1e3 for name, key in PREDICTIONS.items()} for b in batches}
            for d in devices}


def score(row: dict, steps_ms: dict[str, dict[str, dict[str, float]]]) -> dict:
    """`row` with the predicted step times of its batch and the mean assignment time's share of each."""
    batch = str(row["batch"])
    step_ms = {d: per_batch[batch] for d, per_batch in steps_ms.items()}
    share = {d: {name: row["mean_ms"] / ms for name, ms in refs.items()} for d, refs in step_ms.items()}
    return dict(row, step_ms=step_ms, share=share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 25], help="sampled steps per batch size")
    parser.add_argument("--matchers", nargs="+", default=["poto", "hungarian"], choices=["poto", "hungarian"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--us-per-trip", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/assignment_depth.json")
    parser.add_argument("--step-model", default=STEP_MODEL, help="accelerator_model.py's JSON (predicted steps)")
    parser.add_argument("--devices", nargs="+", default=list(DEVICES))
    parser.add_argument("--rescore", action="store_true",
                        help="only recompute the step references and shares of the rows already in --out")
    args = parser.parse_args()
    if len(args.steps) != len(args.batches):
        parser.error(f"--steps needs one count per batch size ({len(args.batches)}), got {args.steps}")
    if args.rescore:
        if not pathlib.Path(args.out).exists():
            parser.error(f"--rescore reads the rows of --out {args.out}, which does not exist; run without --rescore")
        previous = json.loads(pathlib.Path(args.out).read_text())
        rows = [{k: v for k, v in row.items() if k not in ("step_ms", "share")} for row in previous["rows"]]
        args.us_per_trip = previous["us_per_trip"]
        steps_ms = predicted_step_ms(args.step_model, args.devices, sorted({row["batch"] for row in rows}))
    else:
        steps_ms = predicted_step_ms(args.step_model, args.devices, args.batches)
        rows = count_rows(args)
    rows = [score(row, steps_ms) for row in rows]
    print_rows(rows, args.us_per_trip)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(jax=jax.__version__, us_per_trip=args.us_per_trip, step_model=args.step_model,
                                   rows=rows), indent=2))
    print(f"wrote {out}")


def count_rows(args: argparse.Namespace) -> list[dict]:
    """Sampled steps per (data set, batch), trips of each matcher: one summary row per (data set, matcher, batch)."""
    rows = []
    for dataset in args.datasets:
        grid = priors.point_grid(DATASETS[dataset]["grid_hw"])
        counters = {matcher: trip_counter(matcher, grid) for matcher in args.matchers}
        for batch, steps in zip(args.batches, args.steps):
            rng = np.random.default_rng([args.seed, batch, len(dataset)])
            per_step = {matcher: [] for matcher in args.matchers}
            loops = {matcher: [] for matcher in args.matchers}
            gts = []
            for _ in range(steps):
                images = [make_image(rng, dataset, grid, count) for count in sample_counts(rng, dataset, batch)]
                gts.append(max(int(image["mask"].sum()) for image in images))
                for matcher, counter in counters.items():
                    trips = np.stack([np.asarray(counter(jax.device_put(image))) for image in images])  # [B, loops]
                    per_step[matcher].append(int(trips.max(0).sum()))
                    loops[matcher].append(trips.max(0).tolist())
            for matcher in args.matchers:
                rows.append(dict(dataset=dataset, matcher=matcher, batch=batch, steps=steps,
                                 mean_max_gts=float(np.mean(gts)), max_gts=max(gts),
                                 mean_loop_trips=np.mean(loops[matcher], 0).round(1).tolist(),
                                 **summary(per_step[matcher], args.us_per_trip)))
    return rows


def print_rows(rows: list[dict], us_per_trip: float) -> None:
    """The trips table with each reference device's predicted step (realistic / compute-bound) and the shares."""
    devices = list(rows[0]["step_ms"])
    print(f"Assignment while-loop trips per train step (sum over the solver's loops of the max over the batch), "
          f"{us_per_trip:g} us per trip; step = predicted DATE-R50-F train step (benchmarks/accelerator_model.py), "
          f"realistic / compute-bound, share = mean assignment ms / step ms")
    print(f"{'data':>10} {'matcher':>9} {'B':>3} {'steps':>5} {'max G':>11} {'trips mean':>10} {'median':>7} "
          f"{'p90':>6} {'max':>6} {'per loop (mean)':>16} {'ms mean':>8} {'ms max':>7} "
          + " ".join(f"{d + ' step ms':>17} {'share':>12}" for d in devices))
    for r in rows:
        loop_text = "/".join(f"{t:g}" for t in r["mean_loop_trips"])
        refs = " ".join(f"{r['step_ms'][d]['realistic']:>8.1f} /{r['step_ms'][d]['compute']:>7.1f} "
                        f"{100 * r['share'][d]['realistic']:>4.1f}%/{100 * r['share'][d]['compute']:>5.1f}%"
                        for d in devices)
        print(f"{r['dataset']:>10} {r['matcher']:>9} {r['batch']:>3} {r['steps']:>5} "
              f"{r['mean_max_gts']:>6.1f}/{r['max_gts']:>4} {r['mean']:>10.1f} {r['median']:>7.0f} {r['p90']:>6.0f} "
              f"{r['max']:>6} {loop_text:>16} {r['mean_ms']:>8.2f} {r['max_ms']:>7.2f} {refs}")


if __name__ == "__main__":
    main()
