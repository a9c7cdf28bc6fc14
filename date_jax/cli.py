"""The one entry bootstrap of every command (train, evaluate, the tools): environment, backend switch, logging,
distributed start-up, flag parsing with checked config overrides, and user errors as one `error: ...` line.

    cli.run(main)        # instead of absl's app.run(main)

`run` sets TensorFlow's log level, parses the flags (an unknown `--config.a.b` override or a missing config file ends
in one line listing what is valid), applies `date_jax.runtime.configure()` before JAX creates its client, keeps the
libraries' INFO chatter off the console, joins a multi-host job when the cluster environment (or the
`--coordinator_address` flags, where a command defines them) says so, then calls `main`. A `UserError`,
`FileNotFoundError` or `ValueError` escaping `main` ends the process with its message as one line and exit code 1.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import logging as py_logging
import os
import sys
from typing import Callable, Sequence

import ml_collections
from absl import app, flags, logging

# Libraries whose INFO chatter (every checkpoint write, every COCOeval stage, JAX's search for a TPU on a host
# without one) drowns the progress lines: path fragments of the modules that log it.
CHATTY_LIBRARIES = ("/orbax/", "/faster_coco_eval/", "/pycocotools/", "/tensorflow/", "/etils/",
                    "/jax/_src/xla_bridge.py")

OVERRIDE_PREFIX = "--config."


PACKAGE_PREFIX = "date_jax:"      # --config date_jax:configs/demo.py reads the configs shipped with the package
CLUSTER_MARKERS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


class UserError(Exception):
    """A mistake the user can fix; the message says what and how. Ends the command with one `error:` line."""


def config_file_path(path: str) -> str:
    """The file of a `--config` value: a path, or `date_jax:configs/<name>.py` for a config shipped in the package
    (the root `configs/` folder, installed as the subpackage `date_jax.configs`)."""
    if path.startswith(PACKAGE_PREFIX):
        name = path[len(PACKAGE_PREFIX):].removeprefix("configs/")
        return str(importlib.resources.files("date_jax.configs") / name)
    return path


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (`path[:arg]`), without absl flags."""
    if path.startswith(PACKAGE_PREFIX):
        file_path, _, arg = path[len(PACKAGE_PREFIX):].partition(":")
        file_path = config_file_path(PACKAGE_PREFIX + file_path)
    else:
        file_path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_date_jax_config", file_path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"Config file {file_path!r} not found; pass e.g. --config configs/demo.py.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def unknown_override(config: ml_collections.ConfigDict, argv: Sequence[str]) -> str | None:
    """A message for the first `--config.a.b=...` whose key the config does not have, listing the valid keys."""
    for arg in argv:
        if not arg.startswith(OVERRIDE_PREFIX):
            continue
        dotted = arg[len(OVERRIDE_PREFIX):].split("=", 1)[0]
        node, walked = config, []
        for key in dotted.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(walked) or "the config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                return (f"Unknown config key {dotted!r}: {where!r} has no field {key!r}. Valid keys there: "
                        f"{', '.join(valid) if valid else '(none: it is a value, not a group)'}.")
            node = node[key]
            walked.append(key)
    return None


class _QuietLibraries(py_logging.Filter):
    """Drop INFO and DEBUG records that come from `CHATTY_LIBRARIES`; warnings and errors pass."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(lib in record.pathname for lib in CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
    """Keep the console to date-jax's own progress lines plus every library warning."""
    logging.get_absl_handler().addFilter(_QuietLibraries())


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Join the other processes of a multi-host job, from explicit flags or the cluster environment (TPU, SLURM,
    MPI)."""
    import jax

    if jax.distributed.is_initialized():
        return
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    ompi_size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") + 1
    if any(k in os.environ for k in CLUSTER_MARKERS) and max(slurm_tasks, ompi_size, tpu_hosts) > 1:
        jax.distributed.initialize()


def define_distributed_flags() -> None:
    """--coordinator_address / --num_processes / --process_id for a multi-process job without a scheduler."""
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for a multi-process job without a "
                        "scheduler.")
    flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", -1, "Index of this process (with --coordinator_address).")


def _distributed_flags() -> tuple[str, int, int]:
    """The values of the distributed flags when the command defines them, else the defaults."""
    if "coordinator_address" not in flags.FLAGS:
        return "", 0, -1
    return flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id


def run(main: Callable[[list[str]], int | None], *, tensorflow: bool = True, distributed: bool = True) -> None:
    """Run an absl `main` with the bootstrap described above (`tensorflow`: the command reads data through tf.data;
    `distributed`: it joins multi-host jobs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    def bootstrapped(argv: list[str]) -> int | None:
        from date_jax import runtime

        runtime.configure(tensorflow=tensorflow)
        quiet_library_logs()
        try:
            if distributed:
                initialize_distributed(*_distributed_flags())
            return main(argv)
        except (UserError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)

    app.run(bootstrapped, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parser for `app.run` that turns unknown config overrides into a clear error listing valid keys."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None and "--config" in argv[:-1]:
        config_arg = argv[argv.index("--config") + 1]
    if config_arg is not None:
        try:
            config = load_config_file(config_arg)
        except FileNotFoundError as e:
            sys.exit(f"error: {e}")
        argv = [f"--config={config_file_path(config_arg)}" if a.startswith("--config=") else a for a in argv]
        if "--config" in argv[:-1]:
            index = argv.index("--config") + 1
            argv[index] = config_file_path(argv[index])
        message = unknown_override(config, argv)
        if message:
            sys.exit(f"error: {message}")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:       # a missing, unknown or malformed flag: one line, like every other user mistake
        sys.exit(f"error: {e} (--helpfull lists every flag)")
