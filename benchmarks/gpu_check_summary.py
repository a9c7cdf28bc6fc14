"""The one table of benchmarks/gpu_check.sh: train step and NMS-free inference figures next to docs/design.md §5's
targets, read from the JSON files that train_step.py and inference.py wrote into OUT_DIR.

    python benchmarks/gpu_check_summary.py OUT_DIR

The same columns at every size and on every backend (the CPU rehearsal prints what the GPU run will print); the
targets apply at 800x1344 only and read 'n/a' at any other size. Exits 1, naming the file, when a result is missing.
Standard library only.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

TRAIN_FILE, INFERENCE_FILE = "gpu_train_step.json", "gpu_inference.json"
TARGET_SIZE = [800, 1344]
TRAIN_TARGET = "≥ 250 img/s"       # docs/design.md §5, one H100-class GPU, bf16
LATENCY_TARGET = "≤ 8 ms"          # docs/design.md §5, batch 1


def fmt_gib(value: int | None) -> str:
    """Bytes as GiB with two decimals, or '-' when unknown."""
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def rows(train: dict[str, Any], inference: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows (what, batch, ms, img/s, peak mem, XLA est., compile s, target) from the two result dicts."""
    at_target_size = train["size"] == TARGET_SIZE
    d = train["date"]
    table = [("train step", str(train["batch"]), f"{d['step_s_median'] * 1e3:.1f}", f"{d['images_per_s']:.2f}",
              fmt_gib(train.get("peak_bytes")), fmt_gib(train.get("static_bytes")), f"{train['compile_s']:.1f}",
              TRAIN_TARGET if at_target_size else "n/a")]
    for batch, entry in sorted(inference["batches"].items(), key=lambda item: int(item[0])):
        target = LATENCY_TARGET if at_target_size and batch == "1" else ("-" if at_target_size else "n/a")
        p = entry["date"]
        table.append(("predict (NMS-free)", batch, f"{p['step_s_median'] * 1e3:.1f}", f"{p['images_per_s']:.2f}",
                      fmt_gib(inference.get("peak_bytes")), fmt_gib(entry.get("static_bytes")),
                      f"{entry['compile_s']:.1f}", target))
    return table


def render(train: dict[str, Any], inference: dict[str, Any]) -> str:
    """The summary as printed: one header line with the machine and setting, the column names, one line per row."""
    h, w = train["size"]
    lines = [f"gpu_check summary | {train['device']} ({train['backend']}, {train['num_devices']} device(s)) | "
             f"jax {train['jax']} | DATE-R50-F {h}x{w} {train['dtype']}"
             + (" (tiny model)" if train.get("tiny") else ""),
             f"{'what':20s} {'batch':>5s} {'ms':>9s} {'img/s':>8s} {'peak mem':>10s} {'XLA est.':>10s} "
             f"{'compile s':>9s}  target"]
    for what, batch, ms, ips, peak, est, compile_s, target in rows(train, inference):
        lines.append(f"{what:20s} {batch:>5s} {ms:>9s} {ips:>8s} {peak:>10s} {est:>10s} {compile_s:>9s}  {target}")
    lines.append("ms: median step time (train) or call latency with detections fetched (predict)")
    lines.append("peak mem: the backend's peak in that process ('-' on CPU); XLA est.: arguments + outputs + temps")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python benchmarks/gpu_check_summary.py OUT_DIR")
        return 2
    out = pathlib.Path(sys.argv[1])
    results = []
    for name in (TRAIN_FILE, INFERENCE_FILE):
        path = out / name
        if not path.is_file():
            print(f"gpu_check summary: {path} is missing: its benchmark failed (see the log above)")
            return 1
        results.append(json.loads(path.read_text()))
    print(render(*results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
