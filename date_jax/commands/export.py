"""`tools/export.py`: export a trained workdir for serving (a StableHLO artifact and/or a TF SavedModel + its JSON).

    python tools/export.py --workdir runs/demo --out runs/demo/export [--step N] [--format stablehlo|savedmodel|both]
        [--batch B|dynamic] [--size H W] [--platforms cpu,cuda]

See date_jax/export.py for the artifacts' contract and docs/serving.md for serving them.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags, logging

from date_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training directory with checkpoints/ and config.json.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("out", None, "Folder for detector.json, detector.stablehlo and saved_model/.")
flags.DEFINE_string("format", "both", "stablehlo | savedmodel | both.")
flags.DEFINE_string("batch", "dynamic", "'dynamic' (a symbolic batch dimension) or a fixed batch size.")
flags.DEFINE_list("size", None, "Static input H W (multiples of 32; default: the config's landscape test bucket).")
flags.DEFINE_list("platforms", ["cpu", "cuda"], "Platforms the artifacts are lowered for (cpu, cuda, rocm, tpu).")

FORMAT_CHOICES = {"stablehlo": ("stablehlo",), "savedmodel": ("savedmodel",), "both": ("stablehlo", "savedmodel")}
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def parse_batch(value: str) -> int | None:
    """'dynamic' -> None; a positive integer string -> int; else ValueError naming the value."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"--batch={value!r}: give 'dynamic' or a positive integer")
    return int(value)


def parse_size(tokens: Sequence[str] | None) -> tuple[int, int] | None:
    """['H', 'W'] (from `--size H W` or `--size=H,W`) -> (H, W); None -> None; else ValueError naming the value."""
    if not tokens:
        return None
    if len(tokens) != 2 or not all(t.strip().isdigit() for t in tokens):
        raise ValueError(f"--size {' '.join(tokens)}: give two integers H W, e.g. --size 800 1344")
    from date_jax import export
    try:
        return export.check_input_size([int(t) for t in tokens])
    except ValueError as error:
        raise ValueError(f"--size {' '.join(tokens)}: {error}") from error


def run(argv: Sequence[str]) -> None:
    """absl main: check the flags, export, print what was written; user mistakes exit with one `error:` line."""
    logging.set_verbosity(logging.WARNING)       # TensorFlow's SavedModel writer logs every step at INFO
    size_tokens = list(FLAGS.size or []) + list(argv[1:])     # `--size 800 1344` leaves 1344 as a positional argument
    if argv[1:] and not FLAGS.size:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; see --help")
    try:
        missing = [name for name in ("workdir", "out") if not FLAGS[name].value]
        if missing:
            raise ValueError(f"{' and '.join('--' + name for name in missing)} required; see --help")
        if FLAGS.format not in FORMAT_CHOICES:
            raise ValueError(f"--format={FLAGS.format!r} is not one of {', '.join(FORMAT_CHOICES)}")
        unknown = [p for p in FLAGS.platforms if p not in PLATFORMS]
        if unknown or not FLAGS.platforms:
            raise ValueError(f"--platforms={','.join(FLAGS.platforms)}: choose among {', '.join(PLATFORMS)}")
        batch = parse_batch(FLAGS.batch)
        size = parse_size(size_tokens)
        if not os.path.isdir(FLAGS.workdir):
            raise FileNotFoundError(f"--workdir={FLAGS.workdir!r} is not a directory")
        from date_jax import export
        info = export.export_workdir(FLAGS.workdir, FLAGS.out, step=FLAGS.step, formats=FORMAT_CHOICES[FLAGS.format],
                                     batch=batch, input_size=size, platforms=tuple(FLAGS.platforms))
    except (FileNotFoundError, ValueError) as error:
        sys.exit("error: " + " ".join(str(error).split()))
    print(f"exported step {info['source']['step']} of {FLAGS.workdir}: input {info['batch']} batch x "
          f"{info['input_size'][0]} x {info['input_size'][1]} x 3 uint8, {len(info['categories'])} categories "
          f"({info['categories_from']}), platforms {','.join(info['platforms'])}")
    for kind, name in info["files"].items():
        print(f"  {kind}: {os.path.join(FLAGS.out, name)}")
    print(f"  metadata: {os.path.join(FLAGS.out, 'detector.json')}")


def main() -> None:
    """Console entry point (`date-jax-export`) and tools/export.py."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")    # TF only writes the SavedModel here; quiets its banner
    cli.run(run, distributed=False)
