"""Evaluate checkpoints: python evaluate.py --workdir DIR [--config configs/X.py] [--step N|latest|all] [--watch].

Writes DIR/eval/<step>/detections.json (COCO results, original category ids), DIR/eval/<step>/metrics.json, a few
PNGs with predicted (red) and true (green) boxes, and TensorBoard scalars under DIR/eval. Without --config the run's
own DIR/config.json is used. On a multi-host job every process runs it; process 0 computes the metric and writes.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from date_jax import cpu_memory  # noqa: E402

if __name__ == "__main__":
    cpu_memory.retain_freed_memory()   # first: before JAX creates its CPU client

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from date_jax import cli  # noqa: E402
from date_jax.train import sharding  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (default: WORKDIR/config.json).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
flags.DEFINE_string("step", "latest", "Checkpoint step to evaluate: a number, 'latest' or 'all'.")
flags.DEFINE_bool("watch", False, "Keep evaluating new checkpoints as training writes them.")
flags.DEFINE_float("watch_interval", 60.0, "Seconds between looks for new checkpoints with --watch.")
flags.DEFINE_float("watch_timeout", 3600.0, "With --watch, stop after this many seconds without a new checkpoint.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_library_logs()
    sharding.initialize_distributed()
    from date_jax.evaluation import evaluator
    from date_jax.train import checkpoints
    try:
        config = FLAGS.config if FLAGS.config is not None else checkpoints.load_config(FLAGS.workdir)
        results = evaluator.evaluate_workdir(config, FLAGS.workdir, FLAGS.step, watch=FLAGS.watch,
                                             watch_interval_s=FLAGS.watch_interval,
                                             watch_timeout_s=FLAGS.watch_timeout)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for step, metrics in sorted(results.items()):
        print(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
