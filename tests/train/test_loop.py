"""train.py end to end on a tiny synthetic set: resume after kill -9 reproduces the losses of an uninterrupted run
(which also evaluates periodically and prints a readable console), SIGTERM leaves a restorable checkpoint and exits 0
(also during start-up), Ctrl-C exits 130 after a checkpoint, a NaN loss stops the run with the step named."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from date_jax import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A synthetic data folder and a compilation cache shared by every run of this module."""
    base = tmp_path_factory.mktemp("train_loop")
    return {"data": str(base / "data"), "cache": str(base / "jax_cache")}


def _command(shared, workdir, steps, *extra):
    return [sys.executable, "train.py", "--config", "configs/demo.py", "--workdir", workdir,
            f"--config.data.root={shared['data']}", "--config.data.synthetic.num_train=48",
            "--config.data.synthetic.num_val=4", "--config.data.synthetic.image_size=96",
            "--config.data.train_short_sizes=(96,)", "--config.data.test_short_size=96",
            "--config.data.max_size=128", "--config.data.batch_size=4", "--config.data.eval_batch_size=4",
            "--config.model.backbone.base_width=8", "--config.model.neck.out_channels=16",
            "--config.model.head.feat_channels=16", "--config.model.head.num_groups=4",
            f"--config.schedule.num_steps={steps}", "--config.schedule.decay_steps=()",
            "--config.optim.warmup_steps=2", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
            "--config.num_eval_images=4", "--config.num_summary_images=0", *extra]


def _env(shared):
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=shared["cache"])


def _losses(workdir):
    """Step -> loss from train_metrics.jsonl (the last record wins when a step was run twice)."""
    out = {}
    with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            out[record["step"]] = record["loss"]
    return out


def _check_console(stdout, stderr, workdir, steps):
    """What a person reads: one progress line per report, the compile announced and timed, an h:mm ETA, the final
    metrics once, no TensorFlow start-up noise; the parameter table and the class names in the workdir."""
    console = stdout + stderr
    for step in range(1, steps + 1):
        assert len(re.findall(rf"step {step}/{steps} loss=", console)) == 1, console[-3000:]
    assert "Compiling the train step" in console and re.search(r"First step done in [0-9.]+ s", console)
    assert re.search(rf"step {steps}/{steps} .*\| ETA 0:00", console)
    assert stdout.count("final metrics: AP=") == 1
    assert "oneDNN" not in console and "absl::InitializeLog" not in console
    assert "parameters (" in console and "| Name" not in console          # one summary line, no table
    with open(os.path.join(workdir, "parameters.txt")) as f:
        assert "bbox_head/" in f.read()
    with open(os.path.join(workdir, "classes.json")) as f:
        assert json.load(f) == {"names": ["circle", "square", "triangle", "cross"], "category_ids": [1, 2, 3, 4]}


def test_resume_after_kill_9_reproduces_the_uninterrupted_run(shared, tmp_path):
    steps = 10
    straight = str(tmp_path / "straight")
    # periodic evaluations (scored in a worker thread) must not change the training losses
    run = subprocess.run(_command(shared, straight, steps, "--config.eval_every_steps=4"), cwd=ROOT,
                         env=_env(shared), check=True, timeout=1200, capture_output=True, text=True)
    _check_console(run.stdout, run.stderr, straight, steps)
    reference = _losses(straight)
    assert sorted(reference) == list(range(1, steps + 1))
    with open(os.path.join(straight, "eval_metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f]
    assert [e["step"] for e in evals] == [4, 8, steps]
    assert all(0.0 <= e["AP50"] <= 1.0 for e in evals)

    interrupted = str(tmp_path / "interrupted")
    proc = subprocess.Popen(_command(shared, interrupted, steps), cwd=ROOT, env=_env(shared),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not checkpoints.available_steps(interrupted):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.available_steps(interrupted)
    assert killed_at and killed_at[-1] < steps, f"the run must be killed mid-way (checkpoints: {killed_at})"
    subprocess.run(_command(shared, interrupted, steps), cwd=ROOT, env=_env(shared), check=True, timeout=1200,
                   capture_output=True)
    resumed = _losses(interrupted)
    assert sorted(resumed) == list(range(1, steps + 1))
    after = range(killed_at[-1] + 1, steps + 1)
    np.testing.assert_allclose([resumed[s] for s in after], [reference[s] for s in after], rtol=1e-6)


def _stop_mid_run(shared, workdir, signum):
    """Start a long run, send `signum` once it has reported a step -> (exit code, stderr)."""
    proc = subprocess.Popen(_command(shared, workdir, 10_000, "--config.checkpoint_every_steps=100000"), cwd=ROOT,
                            env=_env(shared), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "train_metrics.jsonl")
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not os.path.exists(metrics):
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=600)
    return proc.returncode, stderr


def test_sigterm_saves_a_restorable_checkpoint_and_exits_0(shared, tmp_path):
    workdir = str(tmp_path / "preempted")
    returncode, stderr = _stop_mid_run(shared, workdir, signal.SIGTERM)
    assert returncode == 0, stderr[-2000:]
    saved = checkpoints.available_steps(workdir)
    assert len(saved) == 1 and 0 < saved[0] < 10_000
    step, variables = checkpoints.restore_variables(workdir)
    assert step == saved[0] and variables["params"]["bbox_head"]
    assert max(_losses(workdir)) == step


def test_nan_loss_stops_the_run_naming_the_step(shared, tmp_path):
    workdir = str(tmp_path / "nan")
    result = subprocess.run(_command(shared, workdir, 10, "--config.loss.o2o_cls=nan"), cwd=ROOT, env=_env(shared),
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 3
    assert "The loss became non-finite at step 1 (loss nan" in result.stderr
    assert "last good checkpoint is none yet" in result.stderr
    assert checkpoints.available_steps(workdir) == []


def test_ctrl_c_saves_a_checkpoint_and_exits_130(shared, tmp_path):
    workdir = str(tmp_path / "interrupted")
    returncode, stderr = _stop_mid_run(shared, workdir, signal.SIGINT)
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped by signal" in stderr
    saved = checkpoints.available_steps(workdir)
    assert len(saved) == 1 and max(_losses(workdir)) == saved[0]


def test_sigterm_during_start_up_exits_0(shared, tmp_path):
    """The handler is installed before the slow start-up (imports, data, compile): no -15, no traceback."""
    proc = subprocess.Popen(_command(shared, str(tmp_path / "early"), 10), cwd=ROOT, env=_env(shared),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
