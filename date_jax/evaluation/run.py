"""The evaluation run behind `evaluate.py`, the twin of the training loop: restore checkpoints of a workdir, run the
config's evaluators on them, write `eval/<step>/{detections.json,metrics.json,*.png}` and TensorBoard scalars.

With `watch`, it keeps evaluating each new checkpoint as training writes them; a step that training deletes before
it is read is skipped (training keeps only its last few checkpoints).
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from date_jax import checkpoints
from date_jax.evaluation import evaluators as evaluators_lib
from date_jax.models import detector
from date_jax.predictor import Predictor


def parse_step(step: str) -> int | str:
    """'latest' | 'all' | a step number."""
    if step in ("latest", "all"):
        return step
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"--step={step!r}: pass a step number, 'latest' or 'all'") from None


class Run:
    """The evaluators of a config and one predictor, evaluating checkpoints of `workdir`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self.evaluators = evaluators_lib.from_config(config)
        self.names = evaluators_lib.metric_names(config)
        self.predictor = Predictor(config)
        self.expected = detector.abstract_variables(config)
        self.writer = metric_writers.create_default_writer(os.path.join(workdir, evaluators_lib.EVAL_SUBDIR),
                                                           just_logging=jax.process_index() > 0)

    def evaluate(self, step: int | None) -> tuple[int, dict[str, float]]:
        """Evaluate checkpoint `step` (None: the newest undamaged one); process 0 writes its results. Returns the step
        and its metrics (on every process)."""
        step, variables = checkpoints.restore_variables(self.workdir, step, self.expected)
        self.predictor.load(variables)
        predicted = [evaluator.predict(self.predictor) for evaluator in self.evaluators]
        result = evaluators_lib.Result()
        if jax.process_index() == 0:
            result = evaluators_lib.score_all(self.evaluators, predicted)
            evaluators_lib.write_results(self.workdir, step, result)
        metrics = evaluators_lib.share_metrics(result.metrics, self.names)
        self.writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
        if result.pictures is not None:
            self.writer.write_images(step, {"val/predictions": result.pictures})
        self.writer.flush()
        logging.info("step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return step, metrics

    def evaluate_if_present(self, step: int) -> dict[str, float] | None:
        """`evaluate(step)`'s metrics, or None (with one warning) when the step vanished before it could be read."""
        try:
            return self.evaluate(step)[1]
        except (FileNotFoundError, ValueError, OSError) as e:
            if step in checkpoints.available_steps(self.workdir):
                raise
            logging.warning("checkpoint step %d of %s was deleted before it could be evaluated (%s); skipping it.",
                            step, self.workdir, type(e).__name__)
            return None


def _todo(steps: Sequence[int], which: int | str, watch: bool) -> list[int | None]:
    """The steps to evaluate first: all, one, or the latest (None: the newest undamaged one)."""
    if which == "all":
        return list(steps)
    if isinstance(which, int):
        return [which]
    return list(steps[-1:]) if watch else [None]


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, step: str = "latest", *, watch: bool = False,
                     watch_interval_s: float = 60.0, watch_timeout_s: float = 3600.0) -> dict[int, dict[str, float]]:
    """evaluate.py: evaluate checkpoint `step` ('latest', 'all' or a number) of `workdir`; with `watch`, keep
    evaluating each new checkpoint until none has appeared for `watch_timeout_s`. Returns {step: metrics}."""
    which = parse_step(step)
    steps = checkpoints.available_steps(workdir)
    if not watch or isinstance(which, int):
        checkpoints.resolve_step(workdir, which if isinstance(which, int) else None)   # one message for both
    run = Run(config, workdir)
    todo = _todo(steps, which, watch)
    results: dict[int, dict[str, float]] = {}
    seen = set(steps[-1:] if which == "latest" else todo)
    last_new = time.monotonic()
    while True:
        for s in todo:
            if watch:
                metrics = run.evaluate_if_present(s)
                if metrics is not None:
                    results[s] = metrics
            else:
                evaluated, metrics = run.evaluate(s)
                results[evaluated] = metrics
        if not watch:
            break
        if todo:
            last_new = time.monotonic()
        if time.monotonic() - last_new > watch_timeout_s:
            logging.info("no new checkpoint in %s for %.0f s: stopping (%d evaluated%s).", workdir, watch_timeout_s,
                         len(results), "" if results else ": nothing was evaluated")
            break
        time.sleep(watch_interval_s)
        todo = [s for s in checkpoints.available_steps(workdir) if s not in seen and s > max(seen, default=-1)]
        seen.update(todo)
    run.writer.close()
    return results
