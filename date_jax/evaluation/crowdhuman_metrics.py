"""CrowdHuman full-body metrics as the reference computes them (docs/spec.md §7.2): AP50, mMR and Recall.

Ground truth comes from the COCO-format json written by the CrowdHuman converter (`bbox` = full box, `iscrowd` =
ignore); detections are COCO results. Per image, Caltech matching at IoU 0.5 with ignore regions tested by IoA; the
decisions of all images are pooled by score to trace recall/precision (AP, trapezoids) and miss rate against false
positives per image (mMR, log-average over nine FPPI points in [1e-2, 1]).

Follows the reference where it is silent or would fail: detections on images without any annotation are not part of
the database (the reference would raise); with no detections at all AP and recall are 0 and mMR is 1.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

IOU_THRESHOLD = 0.5
FPPI_REFERENCES = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
OVERLAP_EPS = 1e-6
METRIC_NAMES = ("AP50", "mMR", "Recall")


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] xywh -> xyxy (float64)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """The reference's border clip of xyxy boxes [K, 4]: x1 in [0, W-1], y1 in [0, H-1], x2 in [0, W], y2 in [0, H]."""
    out = np.asarray(boxes, np.float64).copy()
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def overlaps(dets: np.ndarray, gts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU [D, G], IoA [D, G] = intersection / detection area) of xyxy boxes, with the reference's eps 1e-6."""
    iw = np.minimum(dets[:, None, 2], gts[None, :, 2]) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    ih = np.minimum(dets[:, None, 3], gts[None, :, 3]) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    det_area = ((dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1]))[:, None]
    gt_area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]))[None, :]
    return inter / (det_area + gt_area - inter + OVERLAP_EPS), inter / (det_area + OVERLAP_EPS)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                gt_ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Caltech matching of one image -> (scores [D'], is_tp [D'] bool) of the detections that count, best first.

    det_boxes [D, 4] / gt_boxes [G, 4] xyxy (already clipped), det_scores [D], gt_ignore [G] bool. Each detection,
    in descending score order, takes the unmatched non-ignored gt of largest IoU > 0.5 (TP); failing that, a detection
    whose IoA with an ignore region is > 0.5 is dropped; anything else is a false positive.
    """
    order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
    det_boxes, det_scores = det_boxes[order], np.asarray(det_scores, np.float64)[order]
    keep_gt, ignore_gt = ~gt_ignore, gt_ignore
    iou, ioa = overlaps(det_boxes, gt_boxes)
    iou = np.where(keep_gt[None, :], iou, -np.inf)
    in_ignore = (np.where(ignore_gt[None, :], ioa, -np.inf) > IOU_THRESHOLD).any(axis=1)
    can_match = (iou > IOU_THRESHOLD).any(axis=1)
    is_tp = np.zeros(len(det_scores), bool)
    counts = ~in_ignore                                   # detections that cannot reach a gt: FP unless ignored
    matched = np.zeros(len(gt_boxes), bool)
    for i in np.flatnonzero(can_match):                   # only these depend on which gts earlier ones took
        candidates = np.where(matched, -np.inf, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] > IOU_THRESHOLD:
            matched[j] = True
            is_tp[i] = counts[i] = True
    return det_scores[counts], is_tp[counts]


def _ground_truth(gt: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Images with at least one annotation, in order of first annotation: {id: {boxes xyxy, ignore, height, width}}."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    database: dict[int, dict[str, Any]] = {}
    for ann in gt["annotations"]:
        entry = database.setdefault(ann["image_id"], dict(boxes=[], ignore=[], size=sizes[ann["image_id"]]))
        entry["boxes"].append(ann["bbox"])
        entry["ignore"].append(bool(ann.get("iscrowd", 0)))
    return database


def _group_detections(detections: Iterable[Mapping[str, Any]]) -> dict[int, tuple[list, list]]:
    """{image_id: ([xywh boxes], [scores])} of COCO results."""
    grouped: dict[int, tuple[list, list]] = {}
    for det in detections:
        boxes, scores = grouped.setdefault(det["image_id"], ([], []))
        boxes.append(det["bbox"])
        scores.append(det["score"])
    return grouped


def miss_rate_curve(is_tp: np.ndarray, num_gt: int, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(FPPI [D], miss rate [D]) after each detection of the pooled, score-sorted decisions is_tp [D]."""
    tp = np.cumsum(is_tp)
    fp = np.cumsum(~is_tp)
    return fp / num_images, 1.0 - tp / num_gt


def log_average_miss_rate(fppi: np.ndarray, miss_rate: np.ndarray,
                          references: Sequence[float] = FPPI_REFERENCES) -> float:
    """exp(mean(ln MR_r)) with MR_r the miss rate at the first index whose FPPI >= r (the last index if none)."""
    if len(fppi) == 0:
        return 1.0
    picks = []
    for ref in references:
        reached = np.flatnonzero(fppi >= ref)
        picks.append(miss_rate[reached[0] if len(reached) else len(fppi) - 1])
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(np.asarray(picks)))))


def average_precision(is_tp: np.ndarray, num_gt: int) -> float:
    """Trapezoidal area under the (recall, precision) points traced detection by detection (no (0, 1) anchor)."""
    if len(is_tp) < 2:
        return 0.0
    tp = np.cumsum(is_tp)
    recall = tp / num_gt
    precision = tp / np.arange(1, len(is_tp) + 1)
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def evaluate_crowdhuman(ground_truth: str | Mapping[str, Any],
                        detections: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """{AP50, mMR, Recall} of COCO-format `detections` against a CrowdHuman COCO json (path or dict)."""
    if isinstance(ground_truth, str):
        with open(ground_truth) as f:
            ground_truth = json.load(f)
    database = _ground_truth(ground_truth)
    num_gt = sum(len(e["ignore"]) - sum(e["ignore"]) for e in database.values())
    if num_gt == 0:
        raise ValueError("the CrowdHuman ground truth has no non-ignored box: nothing to evaluate recall against")
    grouped = _group_detections(detections)
    all_scores, all_tp = [], []
    for image_id, entry in database.items():
        if image_id not in grouped:
            continue
        height, width = entry["size"]
        boxes, scores = grouped[image_id]
        det_boxes = clip_boxes(_xywh_to_xyxy(boxes), height, width)
        gt_boxes = clip_boxes(_xywh_to_xyxy(entry["boxes"]), height, width)
        gt_ignore = np.asarray(entry["ignore"], bool)
        gt_order = np.argsort(gt_ignore, kind="stable")   # non-ignored first, as the reference sorts them
        scores_i, tp_i = match_image(det_boxes, np.asarray(scores), gt_boxes[gt_order], gt_ignore[gt_order])
        all_scores.append(scores_i)
        all_tp.append(tp_i)
    if not all_scores or sum(len(s) for s in all_scores) == 0:
        return dict(AP50=0.0, mMR=1.0, Recall=0.0)
    scores = np.concatenate(all_scores)
    order = np.argsort(-scores, kind="stable")
    is_tp = np.concatenate(all_tp)[order]
    fppi, miss_rate = miss_rate_curve(is_tp, num_gt, len(database))
    return dict(AP50=average_precision(is_tp, num_gt), mMR=log_average_miss_rate(fppi, miss_rate),
                Recall=float(is_tp.sum() / num_gt))
