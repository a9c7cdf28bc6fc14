"""COCO bbox metrics: detections in the COCO results format and the 12 standard numbers of COCOeval.

pycocotools is the reference; faster-coco-eval (a C++ re-implementation with the same numbers) is used when installed
and `backend='auto'`. Boxes in results are [x, y, w, h] with w = x2 - x1 (no +1), category ids are the dataset's own.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


def coco_results(image_ids: Sequence[int], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 valid: np.ndarray, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO results [{image_id, category_id, bbox [x, y, w, h], score}] from image_ids [B], boxes [B, K, 4] xyxy,
    scores [B, K], labels [B, K] (0..C-1), valid [B, K]."""
    category_ids = np.asarray(category_ids)
    results = []
    for b, image_id in enumerate(image_ids):
        keep = np.flatnonzero(valid[b])
        xyxy = np.asarray(boxes[b][keep], np.float64)
        wh = xyxy[:, 2:] - xyxy[:, :2]
        for k, (x1, y1), (w, h) in zip(keep, xyxy[:, :2], wh):
            results.append(dict(image_id=int(image_id), category_id=int(category_ids[labels[b][k]]),
                                bbox=[float(x1), float(y1), float(w), float(h)], score=float(scores[b][k])))
    return results


def resolve_backend(backend: str = "auto") -> str:
    """'pycocotools' or 'faster_coco_eval': `auto` picks faster-coco-eval when it is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"COCO metric backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    if backend == "faster_coco_eval" and importlib.util.find_spec("faster_coco_eval") is None:
        raise ImportError("backend='faster_coco_eval' needs `pip install faster-coco-eval`; or use 'pycocotools'")
    return backend


def _api(backend: str) -> tuple[Any, Any]:
    """(COCO class, COCOeval class) of a backend."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval


def load_ground_truth(ann: str | Mapping[str, Any], backend: str = "auto") -> Any:
    """A COCO ground-truth object of `backend` from an annotation file path or an already loaded dict."""
    coco_cls, _ = _api(resolve_backend(backend))
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ann, str):
            return coco_cls(ann)
        gt = coco_cls()
        gt.dataset = dict(ann, annotations=[dict(a) for a in ann["annotations"]])   # COCOeval adds keys to them
        gt.createIndex()
        return gt


def evaluate_coco(ground_truth: Any, detections: Iterable[Mapping[str, Any]], *,
                  image_ids: Sequence[int] | None = None, backend: str = "auto") -> dict[str, float]:
    """The 12 COCO bbox numbers {AP, AP50, ..., ARl} of `detections` (results format) against `ground_truth`.

    `ground_truth` is an annotation path, a COCO-format dict or a COCO object of the same backend; `image_ids`
    restricts the evaluation (default: every image of the ground truth). No detections give all zeros.
    """
    backend = resolve_backend(backend)
    gt = ground_truth if hasattr(ground_truth, "getImgIds") else load_ground_truth(ground_truth, backend)
    detections = list(detections)
    if not detections:
        return {name: 0.0 for name in METRIC_NAMES}
    _, eval_cls = _api(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d) for d in detections])          # loadRes adds keys to every result
        evaluator = eval_cls(gt, dt, "bbox")
        evaluator.params.imgIds = sorted(int(i) for i in (gt.getImgIds() if image_ids is None else image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, np.float64)[: len(METRIC_NAMES)]
    return {name: float(value) for name, value in zip(METRIC_NAMES, stats)}
