"""Detections of a validation split: predicted per process on its local devices, gathered to every process as rows.

Each process predicts its own shard of the split (no collectives inside the loop, so processes may hold different
numbers of batches); the fixed-size detection arrays, rescaled to the original images, are then gathered in process
order with `process_allgather`. One row per real image (`example_mask`), with its ground truth, so a source without
an annotation file can still be scored.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from date_jax import decode
from date_jax.data import pipeline
from date_jax.predictor import Predictor

Rows = dict[str, np.ndarray]


def empty_rows(max_per_img: int, max_boxes: int) -> Rows:
    """The rows of `predict_batches` for zero images (a process without validation images)."""
    k, g = max_per_img, max_boxes
    return dict(image_id=np.zeros([0], np.int64), boxes=np.zeros([0, k, 4], np.float32),
                scores=np.zeros([0, k], np.float32), labels=np.zeros([0, k], np.int32), valid=np.zeros([0, k], bool),
                gt_boxes=np.zeros([0, g, 4], np.float32), gt_labels=np.zeros([0, g], np.int32),
                gt_mask=np.zeros([0, g], bool), original_hw=np.zeros([0, 2], np.int32))


def predict_batches(predict: Predictor, batches: Iterable[Mapping[str, np.ndarray]], *, max_per_img: int,
                    max_boxes: int) -> Rows:
    """Detections of every real example (example_mask) of `batches`, rescaled to original pixels, plus their ground
    truth: image_id [n], boxes [n,K,4], scores, labels, valid [n,K], gt_boxes [n,G,4] (original px), gt_labels,
    gt_mask [n,G], original_hw [n,2] (K = max_per_img, G = max_boxes)."""
    parts = {name: [value] for name, value in empty_rows(max_per_img, max_boxes).items()}
    for batch in batches:
        keep = np.asarray(batch["example_mask"], bool)
        if not keep.any():
            continue
        dets = predict(np.asarray(batch["image"]), np.asarray(batch["image_shape"]))
        scale = np.asarray(batch["scale"], np.float32)
        rows = dict(image_id=np.asarray(batch["image_id"], np.int64),
                    boxes=decode.rescale_boxes(dets["boxes"], scale), scores=dets["scores"], labels=dets["labels"],
                    valid=dets["valid"], gt_boxes=decode.rescale_boxes(batch["boxes"], scale),
                    gt_labels=np.asarray(batch["labels"], np.int32), gt_mask=np.asarray(batch["box_mask"], bool),
                    original_hw=np.round(np.asarray(batch["image_shape"], np.float32) / scale).astype(np.int32))
        for name, value in rows.items():
            parts[name].append(np.asarray(value)[keep].astype(parts[name][0].dtype))
    return {name: np.concatenate(values) for name, values in parts.items()}


def gather_to_host(rows: Rows) -> Rows:
    """Concatenate every process's `rows` (same keys and trailing shapes, any length) in process order."""
    if jax.process_count() == 1:
        return rows
    if int(np.max(rows["image_id"], initial=0)) >= 2**31:
        raise ValueError("image ids must fit in int32 to be gathered across processes")
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(rows["image_id"])], np.int32))).ravel()
    longest = max(int(counts.max()), 1)
    padded = {}
    for name, value in rows.items():
        value = value.astype(np.int32) if value.dtype == np.int64 else value
        pad = [(0, longest - len(value))] + [(0, 0)] * (value.ndim - 1)
        padded[name] = np.pad(value, pad)
    gathered = multihost_utils.process_allgather(padded)
    return {name: np.concatenate([np.asarray(v)[p, :counts[p]] for p in range(len(counts))])
            for name, v in gathered.items()}


def predict_split(config: ml_collections.ConfigDict, predict: Predictor, *, num_images: int = 0) -> Rows:
    """Rows of the first `num_images` validation images (0: all), gathered to every process. Every process must
    call it: this is the part that uses the devices."""
    batches = pipeline.eval_batches(config, process_index=jax.process_index(), process_count=jax.process_count(),
                                    num_images=num_images)
    return gather_to_host(predict_batches(predict, batches, max_per_img=config.test.max_per_img,
                                          max_boxes=config.data.max_boxes))


def ground_truth_from_rows(rows: Mapping[str, np.ndarray], category_ids: list[int]) -> dict[str, Any]:
    """A COCO ground-truth dict built from the rows' boxes (for sources without an annotation file)."""
    images, annotations = [], []
    for i, image_id in enumerate(rows["image_id"]):
        h, w = (int(v) for v in rows["original_hw"][i])
        images.append(dict(id=int(image_id), height=h, width=w))
        for box, label in zip(rows["gt_boxes"][i][rows["gt_mask"][i]], rows["gt_labels"][i][rows["gt_mask"][i]]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(dict(id=len(annotations) + 1, image_id=int(image_id), iscrowd=0,
                                    category_id=int(category_ids[label]), bbox=[x1, y1, x2 - x1, y2 - y1],
                                    area=(x2 - x1) * (y2 - y1)))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=int(c), name=str(c)) for c in category_ids])
