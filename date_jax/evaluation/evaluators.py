"""Evaluators with one interface, chosen by the config: COCO AP, CrowdHuman AP50/mMR/Recall, drawn pictures.

Every evaluator has `predict(predictor)`, the device part that every process must call (it returns what `score`
needs), and `score(predicted) -> Result`, the host part, run on process 0 only and safe in a worker thread (the
training loop scores while it trains). `from_config` builds the list a config asks for: the metric of
`config.test.metric` (a key of `METRICS`) and, with `config.num_summary_images > 0`, the pictures. Both drivers — the
training loop and the evaluation run — use these and write their results with `write_results`, so an evaluation
during training leaves the same `eval/<step>/` files as `evaluate.py`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from date_jax import draw
from date_jax.data import pipeline
from date_jax.evaluation import coco_metrics, crowdhuman_metrics, predictions
from date_jax.predictor import Predictor

EVAL_SUBDIR = "eval"
SUMMARY_SCORE_THR = 0.3            # predicted boxes drawn on the pictures


@dataclasses.dataclass
class Result:
    """What evaluators give back: metrics, COCO-format detections (process 0) and pictures [K, H, W, 3] uint8."""

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    detections: list[dict] | None = None
    pictures: np.ndarray | None = None

    def merge(self, other: "Result") -> "Result":
        """This result with `other`'s metrics added and its detections / pictures where this one has none."""
        return Result({**self.metrics, **other.metrics},
                      self.detections if self.detections is not None else other.detections,
                      self.pictures if self.pictures is not None else other.pictures)


class Evaluator(Protocol):
    """predict (devices, every process) -> score (host, process 0)."""

    def predict(self, predictor: Predictor) -> Any: ...

    def score(self, predicted: Any) -> Result: ...


def _coco(ground_truth: Any, detections: list[dict], image_ids: list[int]) -> dict[str, float]:
    """The 12 COCO numbers over `image_ids`."""
    return coco_metrics.evaluate_coco(ground_truth, detections, image_ids=image_ids)


def _crowdhuman(ground_truth: Any, detections: list[dict], image_ids: list[int]) -> dict[str, float]:
    """CrowdHuman AP50 / mMR / Recall over `image_ids` (the ground truth is cut to them)."""
    if isinstance(ground_truth, str):
        with open(ground_truth) as f:
            ground_truth = json.load(f)
    keep = set(image_ids)
    ground_truth = dict(ground_truth, images=[im for im in ground_truth["images"] if im["id"] in keep],
                        annotations=[a for a in ground_truth["annotations"] if a["image_id"] in keep])
    return crowdhuman_metrics.evaluate_crowdhuman(ground_truth, detections)


Metric = Callable[[Any, list, list], dict[str, float]]
METRICS: dict[str, tuple[Sequence[str], Metric]] = {
    "coco": (coco_metrics.METRIC_NAMES, _coco),
    "crowdhuman": (crowdhuman_metrics.METRIC_NAMES, _crowdhuman),
}


class DetectionEvaluator:
    """Detections of the validation split scored by a metric of `METRICS` against the split's ground truth."""

    def __init__(self, config: ml_collections.ConfigDict, metric: str):
        if metric not in METRICS:
            raise ValueError(f"config.test.metric={metric!r} is not one of {sorted(METRICS)}")
        self.config = config
        self.names, self._metric = METRICS[metric]

    def predict(self, predictor: Predictor) -> predictions.Rows:
        """Rows of the first `config.num_eval_images` validation images (0: all), gathered to every process."""
        return predictions.predict_split(self.config, predictor, num_images=self.config.num_eval_images)

    def score(self, rows: predictions.Rows) -> Result:
        """Metrics and COCO-format detections of the rows."""
        if not len(rows["image_id"]):
            raise ValueError(f"the validation set of {self.config.data.source!r} gave no images to evaluate; check "
                             f"config.data.val_ann / val_images and num_eval_images")
        info = pipeline.dataset_info(self.config, "val")
        category_ids = list(info.category_ids)
        detections = coco_metrics.coco_results(rows["image_id"], rows["boxes"], rows["scores"], rows["labels"],
                                               rows["valid"], category_ids)
        ground_truth = info.ann_file or predictions.ground_truth_from_rows(rows, category_ids)
        values = self._metric(ground_truth, detections, sorted(set(int(i) for i in rows["image_id"])))
        return Result({name: float(values[name]) for name in self.names}, detections)


class PicturesEvaluator:
    """The first validation images with true boxes (green) and predictions scoring >= 0.3 (red), for TensorBoard and
    `eval/<step>/image_<i>.png`; drawn on process 0 from its own predictions."""

    def __init__(self, config: ml_collections.ConfigDict, num_images: int):
        self.config, self.num_images = config, num_images

    def predict(self, predictor: Predictor) -> np.ndarray:
        """uint8 [K, H, W, 3] (K = 0 on processes other than 0), zero-padded to a common size."""
        if jax.process_index() != 0:
            return draw.stack_images([])
        names = list(pipeline.dataset_info(self.config, "val").category_names)
        canvases: list[np.ndarray] = []
        for batch in pipeline.eval_batches(self.config, process_index=0, process_count=1,
                                           num_images=self.num_images):
            dets = predictor(np.asarray(batch["image"]), np.asarray(batch["image_shape"]))
            for b in np.flatnonzero(np.asarray(batch["example_mask"], bool)):
                h, w = (int(v) for v in batch["image_shape"][b])
                gt = np.asarray(batch["box_mask"][b], bool)
                image = draw.draw_boxes(np.asarray(batch["image"][b][:h, :w]), batch["boxes"][b][gt],
                                        labels=batch["labels"][b][gt], names=names, color=draw.TRUE_COLOR)
                shown = dets["valid"][b] & (dets["scores"][b] >= SUMMARY_SCORE_THR)
                canvases.append(draw.draw_boxes(image, dets["boxes"][b][shown], labels=dets["labels"][b][shown],
                                                scores=dets["scores"][b][shown], names=names,
                                                color=draw.PREDICTED_COLOR))
        return draw.stack_images(canvases[:self.num_images])

    def score(self, pictures: np.ndarray) -> Result:
        """The pictures as they are."""
        return Result(pictures=pictures if len(pictures) else None)


def from_config(config: ml_collections.ConfigDict, pictures: bool = True) -> list[Evaluator]:
    """The evaluators `config` asks for: its metric, then (with `pictures` and num_summary_images > 0) the pictures."""
    evaluators: list[Evaluator] = [DetectionEvaluator(config, config.test.metric)]
    if pictures and config.num_summary_images > 0:
        evaluators.append(PicturesEvaluator(config, int(config.num_summary_images)))
    return evaluators


def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Names of the metrics the evaluators of `config` report."""
    if config.test.metric not in METRICS:
        raise ValueError(f"config.test.metric={config.test.metric!r} is not one of {sorted(METRICS)}")
    return tuple(METRICS[config.test.metric][0])


def score_all(evaluators: Sequence[Evaluator], predicted: Sequence[Any]) -> Result:
    """The merged result of every evaluator's `score` (process 0)."""
    result = Result()
    for evaluator, value in zip(evaluators, predicted):
        result = result.merge(evaluator.score(value))
    return result


def share_metrics(metrics: dict[str, float], names: Sequence[str]) -> dict[str, float]:
    """Process 0's `metrics` (the `names`) on every process of a multi-host job."""
    if jax.process_count() == 1:
        return metrics
    values = np.asarray([metrics.get(n, 0.0) for n in names], np.float32)
    values = np.asarray(multihost_utils.broadcast_one_to_all(values), np.float64)
    return dict(zip(names, (float(v) for v in values)))


def write_results(workdir: str, step: int, result: Result) -> str:
    """Write `eval/<step>/{detections.json, metrics.json, image_<i>.png}` under `workdir` (process 0); its folder."""
    out_dir = os.path.join(workdir, EVAL_SUBDIR, str(step))
    os.makedirs(out_dir, exist_ok=True)
    if result.detections is not None:
        with open(os.path.join(out_dir, "detections.json"), "w") as f:
            json.dump(result.detections, f)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(dict(step=step, **result.metrics), f, indent=2)
    for i, picture in enumerate(result.pictures if result.pictures is not None else []):
        draw.save_png(picture, os.path.join(out_dir, f"image_{i}.png"))
    return out_dir
