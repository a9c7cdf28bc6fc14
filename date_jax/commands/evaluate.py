"""Evaluate checkpoints: python evaluate.py --workdir DIR [--config configs/X.py] [--step N|latest|all] [--watch].

Writes DIR/eval/<step>/detections.json (COCO results, original category ids), DIR/eval/<step>/metrics.json, a few
PNGs with predicted (red) and true (green) boxes, and TensorBoard scalars under DIR/eval. Without --config the run's
own DIR/config.json is used. On a multi-host job every process runs it; process 0 computes the metric and writes.
"""
from absl import flags
from ml_collections import config_flags

from date_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (default: WORKDIR/config.json).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
flags.DEFINE_string("step", "latest", "Checkpoint step to evaluate: a number, 'latest' or 'all'.")
flags.DEFINE_bool("watch", False, "Keep evaluating new checkpoints as training writes them.")
flags.DEFINE_float("watch_interval", 60.0, "Seconds between looks for new checkpoints with --watch.")
flags.DEFINE_float("watch_timeout", 3600.0, "With --watch, stop after this many seconds without a new checkpoint.")
flags.DEFINE_bool("reference", False, "Evaluate exactly as the reference code does: float32, each image padded to a "
                  "multiple of 32, batch 1 (config.reference_evaluation); for released PyTorch weights.")
cli.define_distributed_flags()
flags.mark_flags_as_required(["workdir"])


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]}")
    from date_jax import checkpoints
    from date_jax import config as config_lib
    from date_jax.data import synthetic
    from date_jax.evaluation import run

    config = FLAGS.config if FLAGS.config is not None else checkpoints.load_config(FLAGS.workdir)
    if FLAGS.reference:
        config = config_lib.reference_evaluation(config.copy_and_resolve_references())
    synthetic.prepare(config.data)
    try:
        results = run.evaluate_workdir(config, FLAGS.workdir, FLAGS.step, watch=FLAGS.watch,
                                       watch_interval_s=FLAGS.watch_interval, watch_timeout_s=FLAGS.watch_timeout)
    except checkpoints.CheckpointDamageError as e:
        raise cli.UserError(str(e)) from None
    for step, metrics in sorted(results.items()):
        print(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


def main() -> None:
    """Console entry point (`date-jax-evaluate`)."""
    cli.run(_main)


if __name__ == "__main__":
    main()
