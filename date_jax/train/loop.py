"""The training loop behind `train.py`: data, steps, summaries, checkpoints, preemption and evaluation.

Everything a run is built from comes from `train.setup.create_training`; evaluation uses the config's evaluators
(`date_jax.evaluation.evaluators`) through one predictor: periodic evaluations are predicted on the devices in the
loop and scored in a worker thread while training goes on, and every evaluation writes `eval/<step>/` as
`evaluate.py` does.
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent import futures
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview

from date_jax import checkpoints, sharding
from date_jax import config as config_lib
from date_jax.data import pipeline, prefetch, synthetic
from date_jax.evaluation import evaluators as evaluators_lib
from date_jax.predictor import Predictor
from date_jax.train import setup
from date_jax.train.preemption import Preemption
from date_jax.workdir_lock import WorkdirLock


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient became NaN or inf; the message names the step and the last good checkpoint."""


def enable_compilation_cache(workdir: str) -> None:
    """Persist compiled executables in `workdir/jax_cache` (or $JAX_COMPILATION_CACHE_DIR) so restarts skip compiles."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def make_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard events in `workdir` on process 0 (the console gets date-jax's own progress lines instead of a
    copy of every scalar); a writer that drops everything on the other processes."""
    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def plotted(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics worth a TensorBoard curve: COCO's -1 ('no object of this size') sentinels are left out."""
    return {k: v for k, v in metrics.items() if v != -1.0}


def write_parameters(workdir: str, params: Any, writer: metric_writers.MetricWriter) -> str:
    """The parameter table in `workdir/parameters.txt` and TensorBoard; returns the one-line summary."""
    table = parameter_overview.get_parameter_overview(params)
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "parameters.txt"), "w") as f:
            f.write(table + "\n")
    writer.write_texts(0, {"parameters": f"```\n{table}\n```"})
    return f"{total:,} parameters ({total * 4 / 2**20:.1f} MiB in float32); table in {workdir}/parameters.txt"


def format_eta(seconds: float) -> str:
    """h:mm of a duration (rounded up to the minute)."""
    minutes = int(math.ceil(max(seconds, 0.0) / 60))
    return f"{minutes // 60}:{minutes % 60:02d}"


def eval_interval(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Steps between evaluations during training: `eval_every_steps`, else `eval_every_epochs` epochs (0: none)."""
    if config.eval_every_steps:
        return int(config.eval_every_steps)
    return int(config.get("eval_every_epochs", 0)) * steps_per_epoch


class _MetricWindow:
    """Device metrics of the steps since the last report, timings, and the first non-finite step."""

    def __init__(self, first_step: int) -> None:
        self.pending: list[dict[str, jax.Array]] = []
        self.first_step = first_step
        self.start = time.perf_counter()
        self.input_wait = 0.0

    def flush(self, last_good_checkpoint: int | None) -> tuple[dict[str, float], int, float]:
        """Fetch the window -> (mean metrics, number of steps, seconds); raise on a non-finite step."""
        host = jax.device_get(self.pending)
        steps, seconds = len(host), time.perf_counter() - self.start
        for i, m in enumerate(host):
            if not m["finite"]:
                bad = self.first_step + i + 1
                where = (f"step {last_good_checkpoint}" if last_good_checkpoint is not None else "none yet")
                what = "loss" if not np.isfinite(m["loss"]) else ("gradients" if not m["grads_finite"] else "update")
                terms = {k: float(v) for k, v in m.items() if k not in ("finite", "grads_finite")}
                raise NonFiniteLossError(
                    f"The {what} became non-finite at step {bad} (loss {float(m['loss'])}, terms: {terms}). The last "
                    f"good checkpoint is {where}; lower optim.base_lr or check the data, then rerun the same command "
                    "to resume.")
        means = ({k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in ("finite", "grads_finite")}
                 if host else {})
        means["input_wait_share"] = self.input_wait / max(seconds, 1e-9)
        return means, steps, seconds


def _append_jsonl(workdir: str, name: str, record: dict[str, float]) -> None:
    """Append one machine-readable record (full precision) to `workdir/name` on process 0."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "a") as f:
            f.write(json.dumps(record) + "\n")


class _Evaluation:
    """The config's evaluators on the current variables: predicted in the loop, scored on process 0 in a worker
    thread, reported (TensorBoard, eval_metrics.jsonl, eval/<step>/) from the loop's thread once done."""

    def __init__(self, config: ml_collections.ConfigDict, model: Any, writer: metric_writers.MetricWriter,
                 workdir: str):
        self.writer, self.workdir = writer, workdir
        self.evaluators = evaluators_lib.from_config(config, pictures=jax.process_count() == 1)
        self.names = evaluators_lib.metric_names(config)
        self.predictor = Predictor(config, model)
        self.pool = futures.ThreadPoolExecutor(1, thread_name_prefix="date-jax-eval")
        self.jobs: list[tuple[int, float, futures.Future | None]] = []

    def start(self, variables: Any, step: int) -> None:
        """Predict on every process; queue the scoring (process 0)."""
        t0 = time.perf_counter()
        self.predictor.load(variables)
        predicted = [evaluator.predict(self.predictor) for evaluator in self.evaluators]
        job = None
        if jax.process_index() == 0:
            job = self.pool.submit(evaluators_lib.score_all, self.evaluators, predicted)
        self.jobs.append((step, t0, job))

    def report_finished(self, wait: bool = False) -> dict[str, float]:
        """Write the results of finished evaluations in step order (all of them when `wait`); the last metrics."""
        metrics: dict[str, float] = {}
        while self.jobs and (wait or self.jobs[0][2] is None or self.jobs[0][2].done()):
            step, t0, job = self.jobs.pop(0)
            result = job.result() if job is not None else evaluators_lib.Result()
            metrics = evaluators_lib.share_metrics(result.metrics, self.names) if wait else result.metrics
            if jax.process_index() == 0:
                evaluators_lib.write_results(self.workdir, step, result)
                _append_jsonl(self.workdir, "eval_metrics.jsonl", {"step": step, **metrics})
            logging.info("eval at step %d (%.1fs): %s", step, time.perf_counter() - t0,
                         " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            self.writer.write_scalars(step, {f"val/{k}": v for k, v in plotted(metrics).items()})
            if result.pictures is not None:
                self.writer.write_images(step, {"val/predictions": result.pictures})
        return metrics

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _progress_line(step: int, num_steps: int, means: dict[str, float], images_per_s: float, eta_s: float) -> str:
    terms = " ".join(f"{k}={means[k]:.4f}" for k in sorted(means)
                     if k.startswith(("o2o_", "fcos_", "retina_")))
    return (f"step {step}/{num_steps} loss={means.get('loss', float('nan')):.4f} {terms} lr={means.get('lr', 0):.2e} "
            f"| {images_per_s:.1f} img/s, input {100 * means['input_wait_share']:.0f}% | ETA {format_eta(eta_s)}")


class _Progress:
    """The steps' metrics since the last report, the first step's compile time (kept out of speed and ETA), and the
    reports: TensorBoard, `train_metrics.jsonl`, one console line each."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, writer: metric_writers.MetricWriter,
                 first_step: int, num_steps: int):
        self.config, self.workdir, self.writer = config, workdir, writer
        self.first_step, self.num_steps = first_step, num_steps
        self.window = _MetricWindow(first_step)
        self.compile_s = 0.0

    def run_step(self, step_fn: Any, state: Any, batch: Any, step: int) -> tuple[Any, dict[str, jax.Array]]:
        """One step; the first one is announced and timed, as it waits for the compilation."""
        if step != self.first_step:
            return step_fn(state, batch)
        logging.info("Compiling the train step for batches of %s (the first step waits for it)...",
                     tuple(batch["image"].shape))
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        self.compile_s = time.perf_counter() - t0
        logging.info("First step done in %.1f s (compilation included).", self.compile_s)
        return state, metrics

    def report(self, step: int, last_saved: int | None) -> None:
        """Fetch the window (raising on a non-finite step) and report it."""
        means, steps, seconds = self.window.flush(last_saved)
        if self.window.first_step == self.first_step and steps > 1:    # the compile is not a step: keep it out
            seconds, steps = seconds - self.compile_s, steps - 1
        images_per_s = steps * self.config.data.batch_size / max(seconds, 1e-9)
        means.update(images_per_s=images_per_s, step_time_s=seconds / max(steps, 1))
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
        _append_jsonl(self.workdir, "train_metrics.jsonl", {"step": step, **means})
        logging.info(_progress_line(step, self.num_steps, means, images_per_s,
                                    (self.num_steps - step) * seconds / max(steps, 1)))
        self.window = _MetricWindow(step)


def _start(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, setup.Training, int, int]:
    """Mesh, run (model, optimiser, state, step), training images and steps; the workdir's config, class names."""
    mesh = sharding.make_mesh()
    sharding.log_layout(mesh)
    sharding.check_batch_divisible(config.data.batch_size, mesh)
    enable_compilation_cache(workdir)
    synthetic.prepare(config.data)
    config.model.num_classes = pipeline.resolve_num_classes(config)    # checked against (or read from) the data
    checkpoints.save_config(workdir, config)
    train_info = pipeline.dataset_info(config, "train")
    checkpoints.save_classes(workdir, list(train_info.category_names), list(train_info.category_ids))
    num_train_images = config.data.num_train_images or train_info.num_images
    run = setup.create_training(config, mesh, num_train_images)
    return mesh, run, num_train_images, config_lib.total_steps(config, num_train_images)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       preemption: Preemption | None = None) -> dict[str, float]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), then evaluate; returns the final metrics
    ({} when a stop was requested: the state is checkpointed first). The workdir is locked for the whole run: a
    second run on it stops with `WorkdirBusyError` naming the holder."""
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _train(config, workdir, preemption if preemption is not None else Preemption().install())


def _train(config: ml_collections.ConfigDict, workdir: str, preemption: Preemption) -> dict[str, float]:
    """The body of `train_and_evaluate`, run while the workdir is locked."""
    mesh, run, num_train_images, num_steps = _start(config, workdir)
    writer = make_writer(workdir)
    writer.write_texts(0, {"config": f"```\n{config.to_json_best_effort(indent=2)}\n```"})
    logging.info("Model: %s.", write_parameters(workdir, run.state.params, writer))
    manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
    restored = checkpoints.restore_state(manager, run.state)
    state = restored if restored is not None else run.state
    if restored is not None:
        logging.info("Resumed from %s at step %d.", manager.directory, int(state.step))
    step = first_step = int(state.step)
    last_saved = first_step if restored is not None else None
    # assembled in a background thread, so the step never waits on the pipeline's Python work or epoch boundaries
    batches = prefetch.Background(pipeline.train_batches(config, start_step=first_step), max(1, config.data.prefetch))
    steps_per_epoch = config_lib.steps_per_epoch(config, num_train_images)
    every = eval_interval(config, steps_per_epoch)
    logging.info("Training %d steps (%d images, global batch %d, %d per epoch) in %s.", num_steps, num_train_images,
                 config.data.batch_size, steps_per_epoch, workdir)
    evaluation = _Evaluation(config, run.model, writer, workdir)
    progress = _Progress(config, workdir, writer, first_step, num_steps)
    try:
        if jax.process_count() == 1 and preemption.requested:
            logging.warning("Stop requested during start-up: nothing new to save; exiting.")
            return {}
        while step < num_steps:
            t0 = time.perf_counter()
            batch = sharding.device_put_batch(next(batches), mesh)
            progress.window.input_wait += time.perf_counter() - t0
            state, metrics = progress.run_step(run.step_fn, state, batch, step)
            progress.window.pending.append(metrics)
            step += 1
            preempted, last = preemption.reached(step), step == num_steps
            if step % config.log_every_steps == 0 or last or preempted:
                progress.report(step, last_saved)
            if step % config.checkpoint_every_steps == 0 or last or preempted:
                if progress.window.pending:
                    progress.window.flush(last_saved)
                checkpoints.save_or_stop(manager, step, state, config, force=True)
                last_saved = step
            if preempted:
                checkpoints.wait_or_stop(manager)
                logging.warning("Stop requested: checkpoint at step %d written; exiting.", step)
                return {}
            if every and step % every == 0 and not last:
                evaluation.start(state.variables, step)
            evaluation.report_finished()
        checkpoints.wait_or_stop(manager)
        evaluation.report_finished(wait=True)
        evaluation.start(state.variables, step)
        metrics = evaluation.report_finished(wait=True)
    finally:
        evaluation.close()
        batches.close()
        pipeline.log_issue_summary(config, "train")
        preemption.uninstall()
        try:        # a save still in flight when something else failed: finish it, but keep the first error
            manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - reported, then the original exception propagates
            logging.error("The checkpoint being written when the run stopped failed too: %s", e)
        writer.flush()
    return metrics
