"""The training loop behind `train.py`: state, data, steps, summaries, checkpoints, preemption and evaluation."""
from __future__ import annotations

import json
import os
import signal
import time
from concurrent import futures
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview

from date_jax import config as config_lib
from date_jax.convert import pretrained
from date_jax.data import pipeline, prefetch
from date_jax.evaluation import evaluator
from date_jax.models import detector
from date_jax.train import checkpoints, optimizer, sharding
from date_jax.train import step as step_lib


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


class _Preemption:
    """Remembers a SIGTERM so the loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM received: saving a checkpoint at the end of the current step, then exiting.")
        self.requested = True

    def reached(self, step: int) -> bool:
        """True on every process once any process was asked to stop (synchronised across hosts)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def enable_compilation_cache(workdir: str) -> None:
    """Persist compiled executables in `workdir/jax_cache` (or $JAX_COMPILATION_CACHE_DIR) so restarts skip compiles."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def fresh_variables(config: config_lib.ConfigDict, model: Any) -> dict[str, Any]:
    """Initialised (and, when configured, pretrained) model variables as host numpy arrays."""
    size = 2 * max(config.model.strides)
    variables = jax.jit(lambda rng: detector.init_variables(model, rng, (size, size)))(
        jax.random.PRNGKey(config.seed))
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    return pretrained.apply_init_from(config, variables)


class _MetricWindow:
    """Device metrics of the steps since the last report, timings, and the first non-finite loss."""

    def __init__(self, first_step: int) -> None:
        self.pending: list[dict[str, jax.Array]] = []
        self.first_step = first_step
        self.start = time.perf_counter()
        self.input_wait = 0.0

    def flush(self, last_good_checkpoint: int | None) -> tuple[dict[str, float], int, float]:
        """Fetch the window -> (mean metrics, number of steps, seconds); raise on a non-finite loss."""
        host = jax.device_get(self.pending)
        steps, seconds = len(host), time.perf_counter() - self.start
        for i, m in enumerate(host):
            if not m["finite"]:
                bad = self.first_step + i + 1
                where = (f"step {last_good_checkpoint}" if last_good_checkpoint is not None else "none yet")
                raise NonFiniteLossError(
                    f"The loss became {float(m['loss'])} at step {bad} (terms: "
                    f"{ {k: float(v) for k, v in m.items() if k not in ('finite',)} }). The last good checkpoint is "
                    f"{where}; lower optim.base_lr or check the data, then rerun the same command to resume.")
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"} if host else {}
        means["input_wait_share"] = self.input_wait / max(seconds, 1e-9)
        return means, steps, seconds


def _summary_images(config: config_lib.ConfigDict, model: Any, variables: Any) -> dict[str, np.ndarray]:
    """A few validation images with predicted (and true) boxes drawn, [K, H, W, 3] uint8."""
    if config.num_summary_images <= 0 or jax.process_count() > 1:
        return {}
    images = evaluator.draw_predictions(config, model, variables, num_images=config.num_summary_images)
    return {"val/predictions": images} if len(images) else {}


def _append_jsonl(workdir: str, name: str, record: dict[str, float]) -> None:
    """Append one machine-readable record (full precision) to `workdir/name` on process 0."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "a") as f:
            f.write(json.dumps(record) + "\n")


def _report_eval(step: int, seconds: float, metrics: dict[str, float], writer: metric_writers.MetricWriter,
                 workdir: str) -> None:
    """Log, write (TensorBoard, eval_metrics.jsonl) the metrics of the evaluation at `step`."""
    logging.info("eval at step %d (%.1fs): %s", step, seconds, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
    _append_jsonl(workdir, "eval_metrics.jsonl", {"step": step, **metrics})


def evaluate(config: config_lib.ConfigDict, model: Any, state: step_lib.TrainState, step: int,
             writer: metric_writers.MetricWriter, workdir: str) -> dict[str, float]:
    """Run the evaluator on the current variables and write its metrics (process 0 writes)."""
    t0 = time.perf_counter()
    metrics, _ = evaluator.evaluate_variables(config, model, state.variables, num_images=config.num_eval_images)
    _report_eval(step, time.perf_counter() - t0, metrics, writer, workdir)
    writer.write_images(step, _summary_images(config, model, state.variables))
    return metrics


class _BackgroundEval:
    """Periodic evaluations: predicted on the devices in the loop, scored on the host in a worker thread (process 0),
    reported from the loop's thread once done, so training goes on while COCO metrics are computed."""

    def __init__(self, writer: metric_writers.MetricWriter, workdir: str):
        self.writer, self.workdir = writer, workdir
        self.pool = futures.ThreadPoolExecutor(1, thread_name_prefix="date-jax-eval")
        self.jobs: list[tuple[int, float, futures.Future]] = []

    def start(self, config: config_lib.ConfigDict, model: Any, state: step_lib.TrainState, step: int) -> None:
        t0 = time.perf_counter()
        rows = evaluator.predict_rows(config, model, state.variables, num_images=config.num_eval_images)
        self.writer.write_images(step, _summary_images(config, model, state.variables))
        if jax.process_index() == 0:
            self.jobs.append((step, t0, self.pool.submit(evaluator.score_rows, config, rows)))

    def report_finished(self, wait: bool = False) -> None:
        """Write the metrics of finished evaluations, in step order (all of them when `wait`)."""
        while self.jobs and (wait or self.jobs[0][2].done()):
            step, t0, job = self.jobs.pop(0)
            metrics, _ = job.result()
            _report_eval(step, time.perf_counter() - t0, metrics, self.writer, self.workdir)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _progress_line(step: int, num_steps: int, means: dict[str, float], images_per_s: float, eta_s: float) -> str:
    terms = " ".join(f"{k}={means[k]:.4f}" for k in sorted(means)
                     if k.startswith(("o2o_", "fcos_", "retina_")))
    return (f"step {step}/{num_steps} loss={means.get('loss', float('nan')):.4f} {terms} lr={means.get('lr', 0):.2e} "
            f"| {images_per_s:.1f} img/s, input {100 * means['input_wait_share']:.0f}% | ETA {eta_s / 60:.1f} min")


def train_and_evaluate(config: config_lib.ConfigDict, workdir: str) -> dict[str, float]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate; returns the final metrics."""
    mesh = sharding.make_mesh()
    sharding.log_layout(mesh)
    sharding.check_batch_divisible(config.data.batch_size, mesh)
    enable_compilation_cache(workdir)
    checkpoints.save_config(workdir, config)

    num_train_images = config.data.num_train_images or pipeline.dataset_info(config, "train").num_images
    num_steps = config_lib.total_steps(config, num_train_images)
    model = detector.build_model(config)
    variables = fresh_variables(config, model)
    tx = optimizer.make_optimizer(config, variables["params"], num_train_images)
    schedule = optimizer.lr_schedule(config, num_train_images)
    trainable = detector.trainable_mask(variables["params"], config)
    if jax.process_index() == 0:
        parameter_overview.log_parameter_overview(variables["params"])
    state = step_lib.replicated_state(variables, tx, mesh)
    del variables

    manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
    restored = checkpoints.restore_state(manager, state)
    if restored is not None:
        state = restored
        logging.info("Resumed from %s at step %d.", manager.directory, int(state.step))
    first_step = int(state.step)
    last_saved = first_step if restored is not None else None
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    train_step = step_lib.make_train_step(model, tx, config, schedule, mesh, trainable)
    # assembled in a background thread, so the step never waits on the pipeline's Python work or epoch boundaries
    batches = prefetch.Background(pipeline.train_batches(config, start_step=first_step), max(1, config.data.prefetch))
    preemption = _Preemption()
    logging.info("Training %d steps (%d images, global batch %d, %d per epoch) in %s.", num_steps, num_train_images,
                 config.data.batch_size, config_lib.steps_per_epoch(config, num_train_images), workdir)

    periodic_eval = _BackgroundEval(writer, workdir)
    window = _MetricWindow(first_step)
    step = first_step
    try:
        while step < num_steps:
            t0 = time.perf_counter()
            batch = sharding.device_put_batch(next(batches), mesh)
            window.input_wait += time.perf_counter() - t0
            state, metrics = train_step(state, batch)
            window.pending.append(metrics)
            step += 1
            preempted = preemption.reached(step)
            last = step == num_steps
            if step % config.log_every_steps == 0 or last or preempted:
                means, steps, seconds = window.flush(last_saved)
                images_per_s = steps * config.data.batch_size / max(seconds, 1e-9)
                means.update(images_per_s=images_per_s, step_time_s=seconds / max(steps, 1))
                writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
                _append_jsonl(workdir, "train_metrics.jsonl", {"step": step, **means})
                logging.info(_progress_line(step, num_steps, means, images_per_s,
                                            (num_steps - step) * seconds / max(steps, 1)))
                window = _MetricWindow(step)
            if step % config.checkpoint_every_steps == 0 or last or preempted:
                if window.pending:
                    window.flush(last_saved)
                checkpoints.save(manager, step, state, config, force=True)
                last_saved = step
            if preempted:
                manager.wait_until_finished()
                logging.warning("Preempted: checkpoint at step %d written; exiting.", step)
                return {}
            if config.eval_every_steps and step % config.eval_every_steps == 0 and not last:
                periodic_eval.start(config, model, state, step)
            periodic_eval.report_finished()
        manager.wait_until_finished()
        periodic_eval.report_finished(wait=True)
        metrics = evaluate(config, model, state, step, writer, workdir)
    finally:
        periodic_eval.close()
        batches.close()
        preemption.restore()
        manager.wait_until_finished()
        writer.flush()
    return metrics
