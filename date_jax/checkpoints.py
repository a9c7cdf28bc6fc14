"""Orbax checkpoints in `workdir/checkpoints`: async saves, the config beside them, resume with fallback, and the one
place that says which steps exist and whether a checkpoint fits a config's model.

Each step directory holds three items: `variables` ({'params', 'batch_stats'}: all that inference needs), `train`
({'step', 'opt_state'}: what resuming adds) and `meta` (JSON: step, config). Converted PyTorch checkpoints hold
`variables` and `meta` only. `workdir/config.json` is the config of the run, for evaluate.py and the Python API.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"


def checkpoint_dir(workdir: str) -> str:
    """Absolute path of the checkpoint folder of `workdir`."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=("variables", "train", "meta"))


def _to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Write `workdir/config.json` (process 0 only)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(_to_json(config))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained (or converted) with, from `workdir/config.json`."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a date-jax workdir (train.py or "
                                "tools/convert_checkpoint.py writes it); pass --config explicitly.")
    with open(path) as f:
        return ml_collections.ConfigDict(_tuples(json.load(f)))


def save_classes(workdir: str, names: list[str], category_ids: list[int]) -> None:
    """Write `workdir/classes.json`: the class names and original category ids in label order (process 0 only)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, CLASSES_FILE), "w") as f:
            json.dump(dict(names=list(names), category_ids=[int(c) for c in category_ids]), f, indent=2)


def load_classes(workdir: str) -> tuple[list[str], list[int]] | None:
    """(names, category ids) in label order from `workdir/classes.json`, or None for a workdir without one."""
    path = os.path.join(workdir, CLASSES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        classes = json.load(f)
    return [str(n) for n in classes["names"]], [int(c) for c in classes["category_ids"]]


def _tuples(tree: Any) -> Any:
    """JSON turns tuples into lists; restore tuples so the config compares like the original."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: ml_collections.ConfigDict,
         force: bool = False) -> bool:
    """Save a TrainState at `step` (async); every process must call it."""
    meta = {"step": int(step), "config": json.loads(_to_json(config))}
    return manager.save(step, force=force, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(state.variables),
        train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave(meta)))


def restore_state(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
    """The newest restorable TrainState (shapes/shardings of `abstract_state`), falling back past damaged steps."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(abstract_state.variables),
                train=ocp.args.StandardRestore({"step": abstract_state.step, "opt_state": abstract_state.opt_state})))
        except Exception as e:  # a damaged or partial step directory: warn and try the previous one
            logging.warning("Checkpoint at step %d in %s could not be restored (%s: %s); trying the previous one.",
                            step, manager.directory, type(e).__name__, str(e)[:300])
            continue
        variables, train = restored["variables"], restored["train"]
        return abstract_state.replace(step=train["step"], params=variables["params"],
                                      batch_stats=variables["batch_stats"], opt_state=train["opt_state"])
    return None


def available_steps(workdir: str) -> list[int]:
    """Steps with a checkpoint in `workdir`, ascending ([] when there are none)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return []
    manager = make_manager(workdir, async_save=False)
    return sorted(manager.all_steps())


def resolve_step(workdir: str, step: int | None = None) -> int:
    """`step` if `workdir` holds a checkpoint for it, the newest step when None; a clear FileNotFoundError otherwise."""
    steps = available_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)}: train first (train.py) or convert a "
                                "PyTorch checkpoint (tools/convert_checkpoint.py), or pass the right --workdir")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; available steps: {steps}")
    return step


def check_variables_fit(expected: Any, variables: Any, source: str) -> None:
    """Raise a ValueError naming the first variable whose presence or shape differs between `variables` and
    `expected` (the abstract variables of the config's model: a tree of arrays or ShapeDtypeStructs)."""
    want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(expected)).items()}
    got = {"/".join(k): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    advice = ("evaluate it with the config it was trained with (workdir/config.json, the default without --config) "
              "or fix the model settings of --config")
    for path in sorted(want):
        if path not in got:
            raise ValueError(f"{source} does not fit the config: it has no {path} (the config's model needs shape "
                             f"{want[path]}); {advice}")
        if got[path] != want[path]:
            raise ValueError(f"{source} does not fit the config: {path} has shape {got[path]} in the checkpoint but "
                             f"{want[path]} in the model the config builds; {advice}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ValueError(f"{source} does not fit the config: it holds {extra[0]} (shape {got[extra[0]]}) which the "
                         f"config's model does not have; {advice}")


def restore_variables(workdir: str, step: int | None = None, expected: Any = None) -> tuple[int, dict[str, Any]]:
    """(step, {'params', 'batch_stats'} as numpy arrays) of checkpoint `step` (None: the latest) of `workdir`,
    checked against `expected` (the abstract variables of the config's model) when given."""
    step = resolve_step(workdir, step)
    manager = make_manager(workdir, async_save=False)
    restored = manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore()))
    variables = jax.tree.map(np.asarray, restored["variables"])
    variables.setdefault("batch_stats", {})
    if expected is not None:
        check_variables_fit(expected, variables, f"checkpoint step {step} of {workdir}")
    return step, variables


def save_variables(workdir: str, step: int, variables: dict[str, Any], config: ml_collections.ConfigDict) -> None:
    """Write model variables (no optimizer state) as checkpoint `step` of `workdir`, with its config."""
    save_config(workdir, config)
    manager = make_manager(workdir, async_save=False)
    meta = {"step": int(step), "config": json.loads(_to_json(config))}
    manager.save(step, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()
