"""COCO-format annotation files: reading, the annotation rules of docs/spec.md §2.3, and the per-image records of a split.

Rules (mmdetection 2.25 `CocoDataset`): boxes with w < 1, h < 1, area <= 0 or no overlap with the image are dropped;
crowd boxes are excluded from the targets (the evaluator reads them from the json); categories are mapped to contiguous
labels in the order of the json's 'categories' (sorted by id); training skips images without a remaining box.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
from typing import Callable

import numpy as np

from date_jax.data.issues import DataIssues

EXPECTED_LAYOUT = ("expected the mmdetection layout: <root>/annotations/instances_{train,val}2017.json and "
                   "<root>/{train,val}2017/*.jpg (or set config.data.root / train_ann / train_images / val_ann / "
                   "val_images to your paths)")


@dataclasses.dataclass
class Annotations:
    """Per-image records of a split in image-id order: N images, boxes xyxy in original pixels (non-crowd, clipped)."""

    image_ids: np.ndarray                 # int64 [N]
    heights: np.ndarray                   # int32 [N]
    widths: np.ndarray                    # int32 [N]
    file_paths: list[str]                 # [N] absolute paths ('' for sources that hold encoded bytes)
    boxes: list[np.ndarray]               # [N] float32 [n_i, 4]
    labels: list[np.ndarray]              # [N] int32 [n_i] in 0..C-1
    category_ids: list[int]               # original ids in label order
    category_names: list[str]
    ann_file: str = ""
    image_dir: str = ""
    read_encoded: Callable[[int], bytes] | None = None   # index -> encoded image bytes (tfds); None -> file_paths
    record_index: np.ndarray | None = None  # int64 [N]: the index `read_encoded` takes (after subsetting)

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, keep: np.ndarray) -> "Annotations":
        """The records at the indices `keep` (int [M]) in that order."""
        keep = np.asarray(keep, np.int64)
        record_index = np.arange(len(self), dtype=np.int64) if self.record_index is None else self.record_index
        return dataclasses.replace(
            self, image_ids=self.image_ids[keep], heights=self.heights[keep], widths=self.widths[keep],
            file_paths=[self.file_paths[i] for i in keep], boxes=[self.boxes[i] for i in keep],
            labels=[self.labels[i] for i in keep], record_index=record_index[keep])

    def with_training_boxes(self, issues: DataIssues) -> "Annotations":
        """Only the images that keep at least one box (docs/spec.md §2.3 `filter_empty_gt`); the rest are counted."""
        has_box = np.array([len(b) > 0 for b in self.boxes], bool)
        if not has_box.all():
            first = int(np.flatnonzero(~has_box)[0])
            issues.add("no_training_boxes", f"image id {int(self.image_ids[first])}", int((~has_box).sum()))
        return self.subset(np.flatnonzero(has_box))


def check_paths(ann_file: str, image_dir: str) -> None:
    """Raise FileNotFoundError naming the missing path and the expected layout."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file {ann_file!r} not found; {EXPECTED_LAYOUT}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {image_dir!r} not found; {EXPECTED_LAYOUT}")


def _file_size(path: str) -> int | None:
    """Size in bytes of the regular file `path`, None when there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def clean_boxes(xywh: np.ndarray, heights: np.ndarray, widths: np.ndarray, issues: DataIssues,
                context: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply the box rules to xywh [n,4] of images sized heights/widths [n]; returns (xyxy clipped [n,4], keep [n])."""
    xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
    x, y, w, h = xywh.T
    finite = np.isfinite(xywh).all(axis=1)
    degenerate = ~finite | ~(w >= 1) | ~(h >= 1)
    x1 = np.clip(x, 0, widths)
    y1 = np.clip(y, 0, heights)
    x2 = np.clip(x + w, 0, widths)
    y2 = np.clip(y + h, 0, heights)
    outside = ~degenerate & ((x2 <= x1) | (y2 <= y1))
    clipped = ~degenerate & ~outside & ((x < 0) | (y < 0) | (x + w > widths) | (y + h > heights))
    for kind, mask in (("degenerate_box", degenerate), ("box_outside_image", outside), ("box_clipped", clipped)):
        if mask.any():
            issues.add(kind, f"{context}, box {xywh[np.flatnonzero(mask)[0]].tolist()}", int(mask.sum()))
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32), ~degenerate & ~outside


def load_coco_annotations(ann_file: str, image_dir: str, issues: DataIssues, *,
                          check_files: bool = True) -> Annotations:
    """Read a COCO-format json into per-image records (all images, crowd boxes excluded) after the rules above."""
    check_paths(ann_file, image_dir)
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"annotation file {ann_file!r} is not readable JSON ({e}); {EXPECTED_LAYOUT}") from e
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"annotation file {ann_file!r} has no {key!r} list; a COCO json needs 'images', "
                             f"'annotations' and 'categories'")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    label_of = {cid: i for i, cid in enumerate(category_ids)}

    records = []
    for im in data["images"]:
        h, w, name = im.get("height", 0), im.get("width", 0), im.get("file_name", "")
        if not (h and w and h > 0 and w > 0 and name):
            issues.add("bad_image_record", f"{ann_file}: image {im.get('id')}")
            continue
        records.append((int(im["id"]), int(h), int(w), os.path.join(image_dir, name)))
    records.sort(key=lambda r: r[0])    # image-id order, whatever the json's order (the tfds source does the same)
    if check_files:
        sizes = [_file_size(r[3]) for r in records]
        for kind, bad in (("missing_image_file", [r[3] for r, n in zip(records, sizes) if n is None]),
                          ("empty_image_file", [r[3] for r, n in zip(records, sizes) if n == 0])):
            if bad:
                issues.add(kind, bad[0], len(bad))
        records = [r for r, n in zip(records, sizes) if n]
    row_of = {r[0]: i for i, r in enumerate(records)}

    all_image_ids = {im.get("id") for im in data["images"]}
    per_image: list[list[tuple[list[float], int]]] = [[] for _ in records]
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann.get("category_id") not in label_of:
            issues.add("unknown_category", f"{ann_file}: annotation {ann.get('id')} category {ann.get('category_id')}")
            continue
        row = row_of.get(ann.get("image_id"))
        if row is None:
            if ann.get("image_id") not in all_image_ids:
                issues.add("annotation_unknown_image", f"{ann_file}: annotation {ann.get('id')}")
            continue
        bbox = ann.get("bbox", [0, 0, 0, 0])
        area = ann.get("area", 1.0)
        if area is not None and area <= 0:
            bbox = [0.0, 0.0, 0.0, 0.0]     # mmdet drops area <= 0; the degenerate rule counts it
        bbox = list(bbox)[:4] if len(bbox) >= 4 else [0.0, 0.0, 0.0, 0.0]
        per_image[row].append((bbox, label_of[ann["category_id"]]))

    boxes, labels = [], []
    for (image_id, h, w, _), anns in zip(records, per_image):
        xywh = np.array([a[0] for a in anns], np.float64).reshape(-1, 4)
        xyxy, keep = clean_boxes(xywh, np.full(len(anns), h), np.full(len(anns), w), issues, f"image {image_id}")
        boxes.append(xyxy[keep])
        labels.append(np.array([a[1] for a in anns], np.int32)[keep])
    return Annotations(
        image_ids=np.array([r[0] for r in records], np.int64), heights=np.array([r[1] for r in records], np.int32),
        widths=np.array([r[2] for r in records], np.int32), file_paths=[r[3] for r in records], boxes=boxes,
        labels=labels, category_ids=category_ids, category_names=[str(c.get("name", c["id"])) for c in categories],
        ann_file=ann_file, image_dir=image_dir)
