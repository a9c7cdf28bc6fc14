"""Orbax checkpoints in `workdir/checkpoints`: async saves, the config beside them, resume with fallback, and the one
place that says which steps exist and whether a checkpoint fits a config's model.

Each step directory holds three items: `variables` ({'params', 'batch_stats'}: all that inference needs), `train`
({'step', 'opt_state'}: what resuming adds) and `meta` (JSON: step, config). Converted PyTorch checkpoints hold
`variables` and `meta` only. `workdir/config.json` is the config of the run, for evaluate.py and the Python API.

`meta` also holds a fingerprint of each array item (orbax checks no array data: tensorstore only checksums its shard
indices), so a restore notices bytes that changed on disk. A step that cannot be restored as written (unreadable, an
item missing, a fingerprint mismatch, NaN or inf values) is damaged: training moves it aside to
`checkpoints/<step>.corrupt-<time>` and resumes from the previous step; evaluation falls back without moving anything.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
DAMAGED_MARK = ".corrupt-"
HALF_WRITTEN = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")   # orbax's name for a step still being written


class CheckpointDamageError(RuntimeError):
    """A checkpoint step cannot be restored as written: unreadable files, a missing item, changed bytes, NaN or inf."""


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoints hold other arrays than the config builds: a different model, not damage."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a read-only folder, ...); the message names the last good step."""


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
    train = {"step": state.step, "opt_state": state.opt_state}
    meta = {"step": int(step), "config": json.loads(_to_json(config)),
            "fingerprint": {"variables": fingerprint(state.variables)[0], "train": fingerprint(train)[0]}}
    return manager.save(step, force=force, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(state.variables),
        train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave(meta)))


def _words(leaf: jax.Array) -> jax.Array:
    """The bits of an array as a flat uint32 vector [N] (8-byte elements give two words each)."""
    if leaf.dtype == jnp.bool_:
        return jnp.ravel(leaf).astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[leaf.dtype.itemsize]
    return jnp.ravel(jax.lax.bitcast_convert_type(leaf, unsigned)).astype(jnp.uint32)


@jax.jit
def _integrity(tree: Any) -> tuple[jax.Array, jax.Array]:
    """(fingerprint [] uint32, every float finite [] bool) of a pytree of arrays; the sum weights each word by its
    position, so changed, swapped or zeroed bytes all change it."""
    total, finite = jnp.uint32(0), jnp.bool_(True)
    for leaf in jax.tree.leaves(tree):
        words = _words(jnp.asarray(leaf))
        weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
        total = total * jnp.uint32(0x01000193) + jnp.sum(words * weights, dtype=jnp.uint32)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(leaf))
    return total, finite


def fingerprint(tree: Any) -> tuple[int, bool]:
    """(32-bit fingerprint of the bits of every array, whether all floating-point values are finite) of a pytree."""
    total, finite = jax.device_get(_integrity(tree))
    return int(total), bool(finite)


def _verify(meta: Any, items: dict[str, Any]) -> None:
    """Raise CheckpointDamageError unless every restored item is finite and matches the fingerprint saved with it."""
    saved = meta.get("fingerprint", {}) if isinstance(meta, dict) else {}
    for name, tree in items.items():
        actual, finite = fingerprint(tree)
        if not finite:
            raise CheckpointDamageError(f"its {name} item holds NaN or inf values")
        if name in saved and int(saved[name]) != actual:
            raise CheckpointDamageError(f"the bytes of its {name} item changed after saving (fingerprint "
                                        f"{actual:08x}, written {int(saved[name]):08x})")


def _shapes(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """Sorted (shape, dtype) of every array leaf of `tree` (arrays or orbax array metadata)."""
    return sorted((tuple(leaf.shape), str(np.dtype(leaf.dtype))) for leaf in jax.tree.leaves(tree)
                  if hasattr(leaf, "shape"))


def _layout_mismatch(step_dir: str, targets: dict[str, Any]) -> str | None:
    """How the arrays saved in `step_dir` differ from `targets` ({item: tree}), or None when they agree or the saved
    layout cannot be read (damage, not a different model)."""
    handler = ocp.StandardCheckpointHandler()
    for item, target in targets.items():
        try:
            saved = handler.metadata(epath.Path(step_dir) / item).tree
        except Exception:  # unreadable metadata is damage, judged by the caller
            return None
        have, want = _shapes(saved), _shapes(target)
        if have != want:
            extra = sorted(set(have) - set(want)) or sorted(set(want) - set(have))
            return (f"its {item} item holds {len(have)} arrays, this config builds {len(want)} "
                    f"(e.g. shape/dtype {extra[0] if extra else '?'} is not in both)")
    return None


def set_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> str:
    """Rename damaged `checkpoints/<step>` to `<step>.corrupt-<UTC time>` (process 0) so orbax no longer lists it and
    the step can be written again; returns the new path."""
    source = os.path.join(os.fspath(manager.directory), str(step))
    target = f"{source}{DAMAGED_MARK}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if jax.process_index() == 0:
        os.rename(source, target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"date_jax_set_aside_{step}")
    manager.reload()
    logging.warning("Checkpoint step %d is damaged (%s): moved it to %s; falling back to the previous step.",
                    step, reason, target)
    return target


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """The verified TrainState of checkpoint `step`; CheckpointDamageError / CheckpointMismatchError otherwise."""
    train_target = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_state.variables),
            train=ocp.args.StandardRestore(train_target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # unreadable files, missing items, or another model's arrays
        step_dir = os.path.join(os.fspath(manager.directory), str(step))
        mismatch = _layout_mismatch(step_dir, {"variables": abstract_state.variables, "train": train_target})
        if mismatch:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {manager.directory} was written for another model: {mismatch}. "
                "Resume with the config it was trained with, or train this config in a new --workdir.") from None
        raise CheckpointDamageError(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    variables, train = restored["variables"], restored["train"]
    _verify(restored["meta"], {"variables": variables, "train": train})
    return abstract_state.replace(step=train["step"], params=variables["params"],
                                  batch_stats=variables["batch_stats"], opt_state=train["opt_state"])


def restore_state(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
    """The newest restorable TrainState (shapes/shardings of `abstract_state`); damaged steps are moved aside."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return _restore_step(manager, step, abstract_state)
        except CheckpointDamageError as e:
            set_aside(manager, step, str(e))
    return None


def available_steps(workdir: str) -> list[int]:
    """Steps with a checkpoint in `workdir`, ascending ([] when there are none)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        return []
    manager = make_manager(workdir, async_save=False)
    return sorted(manager.all_steps())


def _checked_step(workdir: str, step: int | None, steps: list[int]) -> int:
    """`step` if it is one of `steps` (the workdir's), the newest when None; a clear FileNotFoundError otherwise."""
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {checkpoint_dir(workdir)}: train first (train.py) or convert a "
                                "PyTorch checkpoint (tools/convert_checkpoint.py), or pass the right --workdir")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; available steps: {steps}")
    return step


def resolve_step(workdir: str, step: int | None = None) -> int:
    """`step` if `workdir` holds a checkpoint for it, the newest step when None; a clear FileNotFoundError otherwise."""
    return _checked_step(workdir, step, available_steps(workdir))


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


def _restore_variables_step(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """Verified {'params', 'batch_stats'} numpy arrays of checkpoint `step`; CheckpointDamageError otherwise."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                                 meta=ocp.args.JsonRestore()))
    except Exception as e:  # unreadable files or missing items
        raise CheckpointDamageError(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    variables = jax.tree.map(np.asarray, restored["variables"])
    _verify(restored["meta"], {"variables": variables})
    variables.setdefault("batch_stats", {})
    return variables


def restore_variables(workdir: str, step: int | None = None, expected: Any = None) -> tuple[int, dict[str, Any]]:
    """(step, {'params', 'batch_stats'} as numpy arrays) of checkpoint `step` of `workdir`, checked against
    `expected` (the abstract variables of the config's model) when given; without a step, the newest undamaged one
    (damaged newer steps are skipped with a warning and left in place)."""
    steps = available_steps(workdir)
    chosen = _checked_step(workdir, step, steps)
    manager = make_manager(workdir, async_save=False)
    for candidate in ([chosen] if step is not None else sorted(steps, reverse=True)):
        try:
            variables = _restore_variables_step(manager, candidate)
        except CheckpointDamageError as e:
            if step is not None:
                raise CheckpointDamageError(f"The checkpoint at step {step} in {checkpoint_dir(workdir)} is damaged "
                                            f"({e}); choose another step of {steps}.") from None
            logging.warning("Checkpoint step %d in %s is damaged (%s); trying the previous one.", candidate,
                            checkpoint_dir(workdir), e)
            continue
        if expected is not None:
            check_variables_fit(expected, variables, f"checkpoint step {candidate} of {workdir}")
        return candidate, variables
    raise CheckpointDamageError(f"Every checkpoint in {checkpoint_dir(workdir)} ({steps}) is damaged; nothing to "
                                "restore.")


def _disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the disk or the quota is full."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(error) for s in ("RESOURCE_EXHAUSTED", "No space left", "Disk quota exceeded")):
            return True
        error = error.__cause__ or error.__context__
    return False


def _tree_bytes(path: str) -> int:
    """Bytes of the files under `path`."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _mib(n: int) -> str:
    """A byte count for a message: MiB from 1 MiB on, else bytes."""
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _remove_half_written(directory: str, quiet_s: float = 1.0, limit_s: float = 30.0) -> list[int]:
    """Delete orbax's half-written step folders in `directory` -> their steps. A failed save's other item writers
    can still be finishing (orbax does not join them), so delete until none has reappeared for `quiet_s`."""
    failed: set[int] = set()
    start = last_seen = time.monotonic()
    while time.monotonic() - last_seen < quiet_s and time.monotonic() - start < limit_s:
        for name in os.listdir(directory):
            match = HALF_WRITTEN.match(name)
            if match:
                failed.add(int(match.group(1)))
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                last_seen = time.monotonic()
        time.sleep(0.05)
    return sorted(failed)


def write_failure(manager: ocp.CheckpointManager, step: int | None, error: BaseException,
                  state: Any = None) -> CheckpointWriteError:
    """Remove the half-written step(s) of a failed save (process 0) and describe the failure in one line: the step, the
    last good checkpoint and, for a full disk, the free space a checkpoint needs."""
    directory = os.fspath(manager.directory)
    for settle in (manager.wait_until_finished, manager.close):  # stop the manager's own threads first
        try:
            settle()
        except Exception:  # the same failure again, or a consequence of it
            pass
    failed = _remove_half_written(directory) if jax.process_index() == 0 else []
    manager.reload()
    good = sorted(s for s in manager.all_steps() if s not in failed)
    last = f"step {good[-1]} ({os.path.join(directory, str(good[-1]))})" if good else "none yet"
    which = f"step {failed[-1] if failed else step}"
    if _disk_full(error):
        if good:
            needed = _tree_bytes(os.path.join(directory, str(good[-1])))
        else:
            needed = sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(state)
                         if hasattr(x, "shape"))
        free = shutil.disk_usage(directory).free
        return CheckpointWriteError(
            f"The disk is full: writing the checkpoint of {which} to {directory} failed and its partial files were "
            f"removed. The last good checkpoint is {last}. Free at least {_mib(needed)} there ({_mib(free)} free "
            "now), then rerun the same command to resume.")
    return CheckpointWriteError(
        f"Writing the checkpoint of {which} to {directory} failed ({type(error).__name__}: "
        f"{' '.join(str(error).split())[:300]}); its partial files were removed. The last good checkpoint is {last}; "
        "fix the cause, then rerun the same command to resume.")


def save_or_stop(manager: ocp.CheckpointManager, step: int, state: Any, config: ml_collections.ConfigDict,
                 force: bool = False) -> bool:
    """`save`, raising CheckpointWriteError when this save, or an earlier asynchronous one, fails."""
    try:
        return save(manager, step, state, config, force=force)
    except Exception as e:
        raise write_failure(manager, step, e, state) from e


def wait_or_stop(manager: ocp.CheckpointManager) -> None:
    """`manager.wait_until_finished()`, raising CheckpointWriteError when the save in flight failed."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise write_failure(manager, None, e) from e


def save_variables(workdir: str, step: int, variables: dict[str, Any], config: ml_collections.ConfigDict) -> None:
    """Write model variables (no optimizer state) as checkpoint `step` of `workdir`, with its config."""
    save_config(workdir, config)
    manager = make_manager(workdir, async_save=False)
    meta = {"step": int(step), "config": json.loads(_to_json(config)),
            "fingerprint": {"variables": fingerprint(variables)[0]}}
    manager.save(step, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()
