"""Train a DATE detector: python train.py --config configs/X.py --workdir DIR [--config.key=value ...].

Rerunning the same command resumes from the newest checkpoint in DIR. On a multi-host job every process runs it;
processes join through the cluster environment (TPU, SLURM, Open MPI) or the --coordinator_address flags. SIGTERM
(exit 0) and Ctrl-C (exit 130; a second one exits at once) save a checkpoint at the next step boundary first.
"""
from date_jax.train.preemption import Preemption

PREEMPTION = Preemption().install()   # first of all: a stop request during the slow start-up must not be lost

import sys  # noqa: E402

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from date_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and evaluation results.")
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])

EXIT_NON_FINITE = 3


def _main(argv: list[str], preemption: Preemption) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]} (config values go as --config.key=value)")
    from date_jax import checkpoints, workdir_lock
    from date_jax.convert import download
    from date_jax.train import loop  # after the bootstrap: importing backends must not touch devices first

    try:
        metrics = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, preemption)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_NON_FINITE)
    except (workdir_lock.WorkdirBusyError, checkpoints.CheckpointWriteError, checkpoints.CheckpointDamageError,
            download.WeightsDownloadError) as e:
        raise cli.UserError(str(e)) from None
    if preemption.requested:
        print(f"stopped by signal {preemption.signal}: resume with the same command", file=sys.stderr, flush=True)
        sys.exit(preemption.exit_code)
    if metrics:
        print("final metrics: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


def main() -> None:
    """Console entry point (`date-jax-train`)."""
    cli.run(lambda argv: _main(argv, PREEMPTION))


if __name__ == "__main__":
    main()
