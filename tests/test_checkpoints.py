"""A damaged newest checkpoint never blocks a run: the restore falls back, the bad step is moved aside so it can be
written again, silent changes (flipped bytes, NaN) count as damage, and a failed save stops with the last good step."""
import errno
import glob
import logging
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from date_jax import checkpoints
from date_jax.train import step as step_lib

CONFIG = ml_collections.ConfigDict({"seed": 0})


def _state(step: int) -> step_lib.TrainState:
    """A small TrainState whose values identify `step` (params = base * step, a few Adam updates deep)."""
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32) * step,
                       "bias": np.full(8, step, np.float32)}}
    batch_stats = {"bn": {"mean": np.full(8, 0.5 * step, np.float32)}}
    state = step_lib.create_state({"params": params, "batch_stats": batch_stats}, optax.adam(1e-3))
    return state.replace(step=jnp.asarray(step, jnp.int32))


def _workdir_with_steps(tmp_path, steps=(2, 4)) -> str:
    workdir = str(tmp_path / "run")
    manager = checkpoints.make_manager(workdir, async_save=False)
    for s in steps:
        checkpoints.save(manager, s, _state(s), CONFIG, force=True)
    manager.wait_until_finished()
    manager.close()
    return workdir


def _array_files(step_dir: str, item: str = "variables") -> list[str]:
    """The OCDBT data files of one item, largest last."""
    return sorted(glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True), key=os.path.getsize)


def _truncate(step_dir):
    path = _array_files(step_dir)[-1]
    os.truncate(path, os.path.getsize(path) // 2)


def _delete_item(step_dir):
    shutil.rmtree(os.path.join(step_dir, "train"))


def _delete_metadata(step_dir):
    os.remove(os.path.join(step_dir, "variables", "manifest.ocdbt"))   # the array database's root


def _flip_bytes(step_dir):
    path = _array_files(step_dir)[-1]
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    with open(path, "wb") as f:
        f.write(bytes(data))


def _other_steps_bytes(step_dir):
    """Silent corruption with valid files: step 4's variables replaced by step 2's (finite, readable, wrong)."""
    variables = os.path.join(step_dir, "variables")
    shutil.rmtree(variables)
    shutil.copytree(os.path.join(os.path.dirname(step_dir), "2", "variables"), variables)


DAMAGE = {"truncated array file": _truncate, "deleted item": _delete_item, "deleted metadata file": _delete_metadata,
          "64 flipped bytes": _flip_bytes, "another step's arrays": _other_steps_bytes}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_can_be_written_again(tmp_path, caplog, damage):
    workdir = _workdir_with_steps(tmp_path)
    DAMAGE[damage](os.path.join(checkpoints.checkpoint_dir(workdir), "4"))

    manager = checkpoints.make_manager(workdir, async_save=False)
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_state(manager, _state(0))
    assert restored is not None and int(restored.step) == 2
    np.testing.assert_array_equal(restored.params["conv"]["bias"], np.full(8, 2, np.float32))
    np.testing.assert_array_equal(restored.batch_stats["bn"]["mean"], np.full(8, 1.0, np.float32))
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "step 4" in warnings[0], warnings

    names = sorted(os.listdir(checkpoints.checkpoint_dir(workdir)))
    assert names[:2] == ["2", "4.corrupt-" + names[1].split(".corrupt-")[1]] and len(names) == 2, names
    assert manager.all_steps() == [2]
    # the rerun's next save of step 4 must not meet the damaged step (StepAlreadyExistsError before)
    checkpoints.save(manager, 4, _state(4), CONFIG, force=True)
    manager.wait_until_finished()
    assert checkpoints.available_steps(workdir) == [2, 4]
    step, variables = checkpoints.restore_variables(workdir)
    assert step == 4 and float(variables["params"]["conv"]["bias"][0]) == 4.0


def test_non_finite_restore_is_damage(tmp_path):
    workdir = _workdir_with_steps(tmp_path, steps=(2,))
    manager = checkpoints.make_manager(workdir, async_save=False)
    nan_state = _state(4)
    nan_state = nan_state.replace(params={"conv": {**nan_state.params["conv"], "bias": np.full(8, np.nan, np.float32)}})
    checkpoints.save(manager, 4, nan_state, CONFIG, force=True)
    manager.wait_until_finished()
    restored = checkpoints.restore_state(manager, _state(0))
    assert int(restored.step) == 2
    assert manager.all_steps() == [2]
    assert any(".corrupt-" in n for n in os.listdir(checkpoints.checkpoint_dir(workdir)))


def test_every_step_damaged_starts_fresh(tmp_path):
    workdir = _workdir_with_steps(tmp_path)
    for s in ("2", "4"):
        _truncate(os.path.join(checkpoints.checkpoint_dir(workdir), s))
    manager = checkpoints.make_manager(workdir, async_save=False)
    assert checkpoints.restore_state(manager, _state(0)) is None
    assert manager.all_steps() == []
    checkpoints.save(manager, 2, _state(2), CONFIG, force=True)
    manager.wait_until_finished()
    assert manager.all_steps() == [2]


def test_another_models_checkpoint_is_refused_not_moved(tmp_path):
    workdir = _workdir_with_steps(tmp_path)
    manager = checkpoints.make_manager(workdir, async_save=False)
    wider = step_lib.create_state({"params": {"conv": {"kernel": np.zeros((3, 3, 4, 16), np.float32),
                                                       "bias": np.zeros(16, np.float32)}},
                                   "batch_stats": {"bn": {"mean": np.zeros(16, np.float32)}}}, optax.adam(1e-3))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="step 4 .* another model"):
        checkpoints.restore_state(manager, wider)
    assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ["2", "4"]


def test_evaluation_falls_back_without_moving_and_an_explicit_step_names_the_damage(tmp_path, caplog):
    workdir = _workdir_with_steps(tmp_path)
    _flip_bytes(os.path.join(checkpoints.checkpoint_dir(workdir), "4"))
    with caplog.at_level(logging.WARNING):
        step, variables = checkpoints.restore_variables(workdir)
    assert step == 2 and float(variables["params"]["conv"]["bias"][0]) == 2.0
    assert any("step 4" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ["2", "4"]   # evaluation never moves files
    with pytest.raises(checkpoints.CheckpointDamageError, match=r"step 4 .* is damaged .*choose another step"):
        checkpoints.restore_variables(workdir, step=4)


def test_fingerprint_sees_swapped_and_changed_values():
    tree = {"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2), jnp.bfloat16)}
    base, finite = checkpoints.fingerprint(tree)
    assert finite
    swapped = {**tree, "a": tree["a"][[1, 0, 2, 3, 4, 5]]}
    changed = {**tree, "b": np.asarray(tree["b"]).copy()}
    changed["b"][1, 1] = 2
    assert checkpoints.fingerprint(swapped)[0] != base
    assert checkpoints.fingerprint(changed)[0] != base
    assert checkpoints.fingerprint({k: np.copy(v) for k, v in tree.items()}) == (base, True)
    assert checkpoints.fingerprint({**tree, "a": np.array([np.inf], np.float32)})[1] is False


def _fail_json_writes(monkeypatch):
    """Every later `meta` write fails as a full disk would."""
    async def no_space(self, item, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", no_space)


@pytest.mark.parametrize("async_save", [True, False])
def test_full_disk_stops_naming_the_last_good_step_and_removes_the_partial_step(tmp_path, monkeypatch, async_save):
    workdir = _workdir_with_steps(tmp_path)
    manager = checkpoints.make_manager(workdir, async_save=async_save)
    _fail_json_writes(monkeypatch)
    with pytest.raises(checkpoints.CheckpointWriteError) as raised:
        checkpoints.save_or_stop(manager, 6, _state(6), CONFIG, force=True)
        checkpoints.wait_or_stop(manager)
    message = str(raised.value)
    assert "\n" not in message
    assert "The disk is full" in message and "step 6" in message
    assert f"The last good checkpoint is step 4 ({os.path.join(checkpoints.checkpoint_dir(workdir), '4')})" in message
    assert "Free at least" in message and "rerun the same command" in message
    assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ["2", "4"]   # no half-written step left

    monkeypatch.undo()   # space freed: the rerun writes step 6
    manager = checkpoints.make_manager(workdir, async_save=False)
    checkpoints.save_or_stop(manager, 6, _state(6), CONFIG, force=True)
    checkpoints.wait_or_stop(manager)
    assert checkpoints.available_steps(workdir) == [2, 4, 6]


def test_other_write_errors_stop_with_their_cause(tmp_path, monkeypatch):
    workdir = _workdir_with_steps(tmp_path, steps=(2,))
    manager = checkpoints.make_manager(workdir, async_save=False)

    async def read_only(self, item, directory):
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", read_only)
    expected = r"step 4 .* failed \(PermissionError: .*Permission denied.*last good checkpoint is step 2"
    with pytest.raises(checkpoints.CheckpointWriteError, match=expected):
        checkpoints.save_or_stop(manager, 4, _state(4), CONFIG, force=True)
    assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ["2"]


@pytest.mark.slow
def test_damaged_checkpoint_rerun_finishes_its_schedule(tmp_path):
    """train.py end to end: the newest checkpoint truncated, the rerun falls back, moves it aside and saves past it."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = str(tmp_path / "run")

    def train(steps):
        command = [sys.executable, "train.py", "--config", "configs/demo.py", "--workdir", workdir,
                   f"--config.data.root={tmp_path / 'data'}", "--config.data.synthetic.num_train=16",
                   "--config.data.synthetic.num_val=4", "--config.data.synthetic.image_size=64",
                   "--config.data.train_short_sizes=(64,)", "--config.data.test_short_size=64",
                   "--config.data.max_size=64", "--config.data.batch_size=4", "--config.data.eval_batch_size=4",
                   "--config.model.backbone.base_width=8", "--config.model.neck.out_channels=16",
                   "--config.model.head.feat_channels=16", "--config.model.head.num_groups=4",
                   f"--config.schedule.num_steps={steps}", "--config.schedule.decay_steps=()",
                   "--config.optim.warmup_steps=1", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
                   "--config.num_eval_images=4", "--config.num_summary_images=0"]
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)

    first = train(4)
    assert first.returncode == 0, first.stderr[-2000:]
    assert checkpoints.available_steps(workdir) == [2, 4]
    _truncate(os.path.join(checkpoints.checkpoint_dir(workdir), "4"))
    rerun = train(6)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Checkpoint step 4 is damaged" in rerun.stderr
    assert checkpoints.available_steps(workdir)[-2:] == [4, 6]     # step 4 written again after the fallback to 2
    assert any(n.startswith("4.corrupt-") for n in os.listdir(checkpoints.checkpoint_dir(workdir)))
