"""Train a DATE detector: python train.py --config configs/X.py --workdir DIR [--config.key=value ...].

Rerunning the same command resumes from the newest checkpoint in DIR. On a multi-host job every process runs it;
processes join through the cluster environment (TPU, SLURM, Open MPI) or the --coordinator_address flags.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from date_jax import cpu_memory  # noqa: E402

if __name__ == "__main__":
    cpu_memory.retain_freed_memory()   # first: before JAX creates its CPU client

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from date_jax import cli  # noqa: E402
from date_jax.train import sharding  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and evaluation results.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for a multi-process job without a scheduler.")
flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", -1, "Index of this process (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    cli.quiet_library_logs()
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from date_jax.train import loop  # after distributed init: importing TF/JAX backends must not touch devices first
    try:
        metrics = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    if metrics:
        print("final metrics: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
