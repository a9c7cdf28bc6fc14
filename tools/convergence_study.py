"""Does dual assignment converge faster? Train the variants on the same seeds and data order; evaluate every K steps.

    python tools/convergence_study.py --config configs/convergence_crowded.py --workdir runs/study_crowded \
        --steps 1000 --eval_every 200 --seeds 0 1 2 [--variants date_fcos poto] [--set num_eval_images=100 ...]

Variants (docs/spec.md §1, §11): `date_fcos` DATE with the FCOS one-to-many branch, `date_retina` DATE with the
RetinaNet one-to-many branch, `poto` the one-to-one branch alone, `fcos_nms` the FCOS branch alone with NMS at test
time, `date_fcos_half` DATE-F with the one-to-many loss weights halved (does that branch crowd out the other's share
of each clipped update?).
Each run is `train.py` in `WORKDIR/<variant>/seed<S>`, started in the repository root (relative paths in --set are
relative to it), one after another, all from `WORKDIR/base_config.py`, a copy of --config made at the first call (edits
to the config during a study do not split it); a finished run is skipped, an interrupted one resumes. Then,
from every run in WORKDIR (those of earlier calls too, e.g. a second seed of two variants), it writes
`WORKDIR/convergence.json` (all records), `.md` (tables: mean and 95% Student-t interval per evaluation, paired
differences between variants of the same seed) and `.png` (AP and AP50 against steps with the interval, and the paired
DATE-F minus POTO difference), and prints the command of the same study at full scale on an accelerator host.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "date_fcos": ("DATE (POTO + FCOS o2m)", ("model.o2o=point", "model.o2m=fcos", "test.nms=False")),
    "date_retina": ("DATE (POTO + RetinaNet o2m)", ("model.o2o=point", "model.o2m=retina", "test.nms=False")),
    "poto": ("POTO alone (o2o only)", ("model.o2o=point", "model.o2m=none", "test.nms=False")),
    "fcos_nms": ("FCOS alone + NMS", ("model.o2o=none", "model.o2m=fcos", "test.nms=True", "test.score_thr=0.05",
                                      "test.nms_pre=1000", "test.nms_iou=0.5")),
    "date_fcos_half": ("DATE-F, o2m loss weights halved", ("model.o2o=point", "model.o2m=fcos", "test.nms=False",
                                                           "loss.fcos_cls=0.5", "loss.fcos_iou=0.5",
                                                           "loss.fcos_ctr=0.5")),
}
METRICS = ("AP", "AP50")
# Paired comparisons (same seed: same initialisation and data order): the paper's claim, the gradient-share test, and
# the RetinaNet branch and NMS baselines against the one-to-one branch alone.
PAIRS = (("date_fcos", "poto"), ("date_fcos_half", "date_fcos"), ("date_retina", "poto"), ("date_fcos", "fcos_nms"))
O2O_TERMS = ("o2o_cls", "o2o_box", "o2o_iou")
RUN_FILE = "study_run.json"
CONFIG_COPY = "base_config.py"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a metrics .jsonl file sorted by step, the last one kept per step; unreadable lines are skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:        # a line cut short by a killed run
                continue
            if isinstance(record, dict) and "step" in record:
                by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def schedule_overrides(steps: int, eval_every: int) -> list[str]:
    """Schedule keys for a run of `steps`: lr decays at 80% and 93% of it (the demo's 1200/1400 of 1500)."""
    decays = (round(0.8 * steps), round(14 / 15 * steps))
    return [f"schedule.num_steps={steps}", f"schedule.decay_steps=({decays[0]},{decays[1]})",
            f"eval_every_steps={eval_every}", f"checkpoint_every_steps={eval_every}"]


def run_command(config: str, variant: str, seed: int, steps: int, eval_every: int, run_dir: str,
                extra: Sequence[str] = ()) -> list[str]:
    """The train.py argv of one run: study schedule, then `extra` (user --set), then the variant's own keys."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose from {sorted(VARIANTS)}.")
    for item in extra:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not of the form key=value (e.g. --set num_eval_images=100).")
    keys = [*schedule_overrides(steps, eval_every), f"seed={seed}", *extra, *VARIANTS[variant][1]]
    return [sys.executable, os.path.join(REPO, "train.py"), "--config", config, "--workdir", run_dir,
            *(f"--config.{k}" for k in keys)]


def _settings(command: Sequence[str]) -> list[str]:
    """The arguments of a train.py command that decide its result: all but the python binary and the workdir."""
    i = list(command).index("--workdir")
    return list(command[1:i]) + list(command[i + 2:])


def run_finished(run_dir: str, command: Sequence[str], steps: int) -> bool:
    """Whether `run_dir` holds the evaluation at `steps` made by `command`; one made with other settings is an error."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        saved = json.load(f)["command"]
    if _settings(saved) != _settings(command):
        raise ValueError(f"{run_dir} was trained with other settings ({' '.join(saved[2:])}); "
                         "pass the same flags again or choose a new --workdir.")
    return any(r["step"] == steps for r in read_jsonl(os.path.join(run_dir, "eval_metrics.jsonl")))


def train_run(run_dir: str, command: Sequence[str]) -> tuple[int, float]:
    """Run one train.py command with its log in `run_dir/train.log` -> (return code, wall seconds of this call)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_FILE)
    previous = 0.0
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f).get("wall_s", 0.0)
    start = time.perf_counter()
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        code = subprocess.call(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump({"command": list(command), "wall_s": previous + seconds, "returncode": code}, f, indent=1)
    return code, seconds


def collect_runs(workdir: str) -> dict[str, dict[int, dict[str, Any]]]:
    """{variant: {seed: {"eval": [...], "train": [...], "wall_s": float}}} of every run directory in `workdir`."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in VARIANTS:
        found = os.listdir(os.path.join(workdir, variant)) if os.path.isdir(os.path.join(workdir, variant)) else []
        for seed in sorted(int(name[4:]) for name in found if name.startswith("seed") and name[4:].isdigit()):
            run_dir = os.path.join(workdir, variant, f"seed{seed}")
            wall = 0.0
            if os.path.isfile(os.path.join(run_dir, RUN_FILE)):
                with open(os.path.join(run_dir, RUN_FILE)) as f:
                    wall = json.load(f).get("wall_s", 0.0)
            runs.setdefault(variant, {})[seed] = {
                "eval": read_jsonl(os.path.join(run_dir, "eval_metrics.jsonl")),
                "train": read_jsonl(os.path.join(run_dir, "train_metrics.jsonl")),
                "wall_s": wall}
    return runs


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the two-sided Student-t confidence interval) of `values`; half-width nan for n < 2."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def metric_by_seed(by_seed: dict[int, dict[str, Any]], metric: str) -> dict[int, dict[int, float]]:
    """{step: {seed: value}} of `metric` in the evaluation records of one variant's runs."""
    out: dict[int, dict[int, float]] = {}
    for seed, run in by_seed.items():
        for record in run["eval"]:
            if metric in record:
                out.setdefault(int(record["step"]), {})[seed] = float(record[metric])
    return out


def summarize(runs: dict[str, dict[int, dict[str, Any]]], metric: str) -> dict[str, dict[int, tuple[float, ...]]]:
    """{variant: {step: (mean, std, min, max, n, ci95)}} of `metric` over the seeds that reached that step (std: n-1;
    ci95: half-width of the 95% t interval, nan for one seed)."""
    out: dict[str, dict[int, tuple[float, ...]]] = {}
    for variant, by_seed in runs.items():
        out[variant] = {}
        for step, per_seed in sorted(metric_by_seed(by_seed, metric).items()):
            v = list(per_seed.values())
            mean, ci = t_interval(v)
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            out[variant][step] = (mean, std, min(v), max(v), float(len(v)), ci)
    return out


def markdown_table(runs: dict[str, dict[int, dict[str, Any]]], metrics: Sequence[str] = METRICS) -> str:
    """Rows = evaluated steps, columns = variant x metric in percent (mean ± 95% CI half-width over seeds when there
    are several)."""
    summaries = {m: summarize(runs, m) for m in metrics}
    variants = [v for v in VARIANTS if v in runs]
    steps = sorted({s for m in metrics for v in variants for s in summaries[m][v]})
    header = ["step"] + [f"{VARIANTS[v][0]} {m}" for v in variants for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in steps:
        cells = [str(step)]
        for v in variants:
            for m in metrics:
                entry = summaries[m][v].get(step)
                if entry is None:
                    cells.append("")
                elif entry[4] > 1:
                    cells.append(f"{100 * entry[0]:.1f} ± {100 * entry[5]:.1f}")
                else:
                    cells.append(f"{100 * entry[0]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_differences(runs: dict[str, dict[int, dict[str, Any]]], first: str, second: str,
                       metric: str) -> dict[int, dict[str, Any]]:
    """{step: {"diffs": {seed: first - second}, "mean", "ci95", "positive"}} over the seeds both variants reached
    that step with (same seed = same initialisation and data order)."""
    a = metric_by_seed(runs.get(first, {}), metric)
    b = metric_by_seed(runs.get(second, {}), metric)
    out: dict[int, dict[str, Any]] = {}
    for step in sorted(set(a) & set(b)):
        diffs = {seed: a[step][seed] - b[step][seed] for seed in sorted(set(a[step]) & set(b[step]))}
        if diffs:
            mean, ci = t_interval(list(diffs.values()))
            out[step] = dict(diffs=diffs, mean=mean, ci95=ci, positive=sum(d > 0 for d in diffs.values()))
    return out


def paired_table(runs: dict[str, dict[int, dict[str, Any]]], pairs: Sequence[tuple[str, str]] = PAIRS,
                 metrics: Sequence[str] = METRICS) -> str:
    """Rows = steps, columns = pair x metric: mean paired difference in points [95% CI], seeds where it is > 0."""
    present = [(a, b) for a, b in pairs if a in runs and b in runs]
    tables = {(a, b, m): paired_differences(runs, a, b, m) for a, b in present for m in metrics}
    steps = sorted({s for t in tables.values() for s in t})
    header = ["step"] + [f"{a} − {b} {m}" for a, b in present for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in steps:
        cells = [str(step)]
        for key in ((a, b, m) for a, b in present for m in metrics):
            d = tables[key].get(step)
            if d is None:
                cells.append("")
            elif math.isnan(d["ci95"]):
                cells.append(f"{100 * d['mean']:+.1f} (1 seed)")
            else:
                lo, hi = 100 * (d["mean"] - d["ci95"]), 100 * (d["mean"] + d["ci95"])
                cells.append(f"{100 * d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}] {d['positive']}/{len(d['diffs'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def o2o_loss_table(runs: dict[str, dict[int, dict[str, Any]]], terms: Sequence[str] = O2O_TERMS) -> str:
    """Rows = logged steps, columns = variant x one-to-one loss term (training-window means, averaged over seeds)."""
    variants = [v for v in VARIANTS if v in runs and any(t in r for s in runs[v].values() for r in s["train"]
                                                         for t in terms)]
    values: dict[tuple[str, str, int], list[float]] = {}
    for v in variants:
        for run in runs[v].values():
            for record in run["train"]:
                for t in terms:
                    if t in record:
                        values.setdefault((v, t, int(record["step"])), []).append(float(record[t]))
    steps = sorted({step for (_, _, step) in values})
    header = ["step"] + [f"{v} {t}" for v in variants for t in terms]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in steps:
        cells = [str(step)] + [f"{sum(x) / len(x):.3f}" if (x := values.get((v, t, step))) else ""
                               for v in variants for t in terms]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, dict[int, dict[str, Any]]], path: str, metrics: Sequence[str] = METRICS,
                pair: tuple[str, str] = PAIRS[0]) -> Any:
    """Write a PNG: each metric (in percent) against steps, one line per variant (mean, 95% CI band over seeds), and a
    last panel with the paired difference `pair` of the last metric (mean, 95% CI band, one dot per seed)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    diffs = paired_differences(runs, pair[0], pair[1], metrics[-1])
    panels = len(metrics) + bool(diffs)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        summary = summarize(runs, metric)
        for variant in (v for v in VARIANTS if v in summary and summary[v]):
            steps = sorted(summary[variant])
            mean = [100 * summary[variant][s][0] for s in steps]
            (line,) = ax.plot(steps, mean, marker="o", label=VARIANTS[variant][0])
            ci = [100 * summary[variant][s][5] for s in steps]
            if not any(math.isnan(c) for c in ci):
                ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                                color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"COCO {metric} (%)")
        ax.set_title(f"{metric} on the synthetic val split (mean, 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if diffs:
        ax = axes[0][-1]
        steps = sorted(diffs)
        mean = [100 * diffs[s]["mean"] for s in steps]
        ax.plot(steps, mean, marker="o", color="k", label="mean")
        ci = [100 * diffs[s]["ci95"] for s in steps]
        if not any(math.isnan(c) for c in ci):
            ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color="k",
                            alpha=0.12, label="95% CI")
        for s in steps:
            ax.scatter([s] * len(diffs[s]["diffs"]), [100 * d for d in diffs[s]["diffs"].values()], s=12, color="C3")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{metrics[-1]} difference (points)")
        ax.set_title(f"paired: {pair[0]} − {pair[1]} (dots: seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def write_outputs(workdir: str, runs: dict[str, dict[int, dict[str, Any]]], settings: dict[str, Any]) -> None:
    """convergence.json (settings + every record), convergence.md (tables) and convergence.png in `workdir`."""
    with open(os.path.join(workdir, "convergence.json"), "w") as f:
        json.dump({"settings": settings, "labels": {v: VARIANTS[v][0] for v in runs},
                   "runs": {v: {str(s): r for s, r in by_seed.items()} for v, by_seed in runs.items()}}, f)
    with open(os.path.join(workdir, "convergence.md"), "w") as f:
        f.write("COCO metrics (%), mean ± 95% CI half-width over seeds:\n\n" + markdown_table(runs)
                + "\nPaired differences (points), mean [95% CI] and the seeds where it is positive:\n\n"
                + paired_table(runs) + "\nOne-to-one loss terms (training):\n\n" + o2o_loss_table(runs))
    plot_curves(runs, os.path.join(workdir, "convergence.png"))


def full_scale_command(seeds: Sequence[int], variants: Sequence[str]) -> str:
    """The same study at full scale on an accelerator host: DATE-R50 on COCO, the 1x schedule (90k steps of 16
    images), evaluated every 7,500 steps on the first 1,000 val2017 images (evaluate.py scores a checkpoint on all)."""
    return (f"python tools/convergence_study.py --config configs/date_r50_fcos_1x_coco.py --workdir runs/study_coco "
            f"--steps 90000 --eval_every 7500 --seeds {' '.join(map(str, seeds))} --variants {' '.join(variants)} "
            f"--set num_eval_images=1000")


def pin_base_config(workdir: str, config: str) -> str:
    """Path of `workdir`'s copy of the base config file, made from `config` on the first call (one config per study)."""
    copy = os.path.join(workdir, CONFIG_COPY)
    with open(config) as f:
        text = f.read()
    if not os.path.isfile(copy):
        with open(copy, "w") as f:
            f.write(text)
    else:
        with open(copy) as f:
            if f.read() != text:
                print(f"note: {config} changed since the study began; every run keeps using the copy {copy} "
                      "(choose a new --workdir to study the new config)", flush=True)
    return copy


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line flags of the study."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Folder for the runs and the outputs.")
    parser.add_argument("--steps", type=int, required=True, help="Training steps of every run.")
    parser.add_argument("--eval_every", type=int, required=True, help="Evaluate (and checkpoint) every K steps.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds (init and data order).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.py"), help="Base config file.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="Config override for every run, e.g. --set num_eval_images=100 (repeatable).")
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.eval_every <= 0:
        parser.error("--steps and --eval_every must be positive.")
    if not os.path.isfile(args.config):
        parser.error(f"--config {args.config} is not a file (give a config such as configs/demo.py).")
    return args


def main(argv: Sequence[str]) -> int:
    """Train every (variant, seed) not yet finished, then write the tables, plot and JSON; 1 if a run failed."""
    args = parse_args(argv)
    args.workdir, args.config = os.path.abspath(args.workdir), os.path.abspath(args.config)
    os.makedirs(args.workdir, exist_ok=True)
    base_config = pin_base_config(args.workdir, args.config)
    failed = []
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = os.path.join(args.workdir, variant, f"seed{seed}")
            try:
                command = run_command(base_config, variant, seed, args.steps, args.eval_every, run_dir, args.sets)
                finished = run_finished(run_dir, command, args.steps)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if finished:
                print(f"{variant} seed {seed}: finished before, skipped", flush=True)
                continue
            print(f"{variant} seed {seed}: training ({' '.join(command[2:])})", flush=True)
            code, seconds = train_run(run_dir, command)
            status = "done" if code == 0 else f"FAILED (exit {code}; see {run_dir}/train.log)"
            print(f"{variant} seed {seed}: {status} in {seconds / 60:.1f} min", flush=True)
            if code != 0:
                failed.append(run_dir)
    runs = collect_runs(args.workdir)
    settings = dict(steps=args.steps, eval_every=args.eval_every, config=base_config, sets=args.sets,
                    seeds={v: sorted(by_seed) for v, by_seed in runs.items()})
    write_outputs(args.workdir, runs, settings)
    print(markdown_table(runs))
    print(paired_table(runs))
    total = sum(r["wall_s"] for by_seed in runs.values() for r in by_seed.values())
    print(f"wrote {args.workdir}/convergence.{{json,md,png}}; training + evaluation wall time {total / 60:.1f} min")
    print("the same study at full scale on an accelerator host (COCO, 1x):\n  "
          + full_scale_command(args.seeds, args.variants))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
