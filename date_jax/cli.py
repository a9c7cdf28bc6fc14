"""Flag parsing shared by train.py and evaluate.py: config overrides checked against the config's keys."""
from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

import logging as py_logging

import ml_collections
from absl import flags
from absl import logging

# Libraries whose INFO chatter (every checkpoint write, every COCOeval stage) drowns the progress lines.
CHATTY_LIBRARIES = ("orbax", "faster_coco_eval", "pycocotools", "tensorflow", "etils")

OVERRIDE_PREFIX = "--config."


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (`path[:arg]`), without absl flags."""
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
        return record.levelno >= py_logging.WARNING or not any(f"/{lib}/" in record.pathname
                                                                 for lib in CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
    """Keep the console to date-jax's own progress lines plus every library warning."""
    logging.get_absl_handler().addFilter(_QuietLibraries())


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
        message = unknown_override(config, argv)
        if message:
            sys.exit(f"error: {message}")
    return flags.FLAGS(argv)
