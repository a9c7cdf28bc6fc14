"""A prepared tfds detection set (`coco/2017` or anything with its features) as per-image records with random access.

Features used: `image` (encoded), `image/id`, `objects/bbox` (normalised ymin, xmin, ymax, xmax), `objects/label`
(contiguous), `objects/is_crowd`. Random access (so the batch order is planned exactly as for the json source) needs the
ArrayRecord file format. Image sizes (from the encoded headers) and objects are scanned once and cached beside the
prepared data.
"""
from __future__ import annotations

import io
import logging
import os

import ml_collections
import numpy as np
from PIL import Image

from date_jax.data import coco
from date_jax.data.issues import DataIssues

logger = logging.getLogger("date_jax.data")

# The original ids of the 80 COCO categories in label order (tfds labels are 0..79 in this order).
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                     32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
                     58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87,
                     88, 89, 90)


def _open_source(data: ml_collections.ConfigDict, split_name: str) -> tuple:
    """(builder, random-access source with undecoded images) or a clear error on what to prepare."""
    import tensorflow_datasets as tfds

    data_dir = data.tfds_data_dir or None
    try:
        builder = tfds.builder(data.tfds_name, data_dir=data_dir)
    except Exception as e:   # tfds raises several types for unknown or unprepared names
        raise FileNotFoundError(f"tfds data set {data.tfds_name!r} not found in {data_dir or 'the tfds default dir'}"
                                f" ({e}); prepare it with `tfds build {data.tfds_name} --file_format=array_record`"
                                f" or set config.data.tfds_data_dir") from e
    if not builder.is_prepared():
        raise FileNotFoundError(f"tfds data set {data.tfds_name!r} is not prepared in {builder.data_dir}; run "
                                f"`tfds build {data.tfds_name} --file_format=array_record`")
    if split_name not in builder.info.splits:
        raise ValueError(f"tfds data set {data.tfds_name!r} has splits {list(builder.info.splits)}, not "
                         f"{split_name!r}; set config.data.tfds_train_split / tfds_val_split")
    try:
        source = builder.as_data_source(split_name, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:
        raise ValueError(f"tfds data set {data.tfds_name!r} in {builder.data_dir} has no random access ({e}); it "
                         f"needs the ArrayRecord format: `tfds build {data.tfds_name} --file_format=array_record` "
                         f"(or convert the prepared files with `tfds convert_format`)") from e
    return builder, source


def _scan(source, cache_file: str, issues: DataIssues) -> dict[str, np.ndarray]:
    """Image ids, sizes [N,2] (from the encoded headers) and flattened objects of every record (cached when possible).

    Returns arrays image_id [N], size [N,2] (0 for unreadable records), offset [N+1], bbox [M,4], label [M], crowd [M].
    """
    if os.path.isfile(cache_file):
        with np.load(cache_file) as cached:
            scanned = dict(cached)
        if len(scanned["image_id"]) == len(source):
            return scanned
    image_id, size, offset, bbox, label, crowd = [], [], [0], [], [], []
    for i in range(len(source)):
        example = source[i]
        try:
            width, height = Image.open(io.BytesIO(example["image"])).size
        except Exception:   # a corrupt record: size 0, the image is dropped
            issues.add("unreadable_image", f"record {i}")
            width = height = 0
        objects = example["objects"]
        image_id.append(int(example["image/id"]))
        size.append((height, width))
        bbox.append(np.asarray(objects["bbox"], np.float32).reshape(-1, 4))
        label.append(np.asarray(objects["label"], np.int32).reshape(-1))
        crowd.append(np.asarray(objects["is_crowd"], bool).reshape(-1))
        offset.append(offset[-1] + len(label[-1]))
    scanned = dict(image_id=np.array(image_id, np.int64), size=np.array(size, np.int32).reshape(-1, 2),
                   offset=np.array(offset, np.int64), bbox=np.concatenate(bbox or [np.zeros((0, 4), np.float32)]),
                   label=np.concatenate(label or [np.zeros(0, np.int32)]),
                   crowd=np.concatenate(crowd or [np.zeros(0, bool)]))
    try:
        with open(cache_file, "wb") as f:
            np.savez(f, **scanned)
    except OSError:
        logger.info("Could not cache the record scan in %s; it will be repeated next time.", cache_file)
    return scanned


def load_tfds_annotations(data: ml_collections.ConfigDict, split: str, issues: DataIssues) -> coco.Annotations:
    """Per-image records of a prepared tfds split ('train' | 'val'); images are read by index from the source."""
    split_name = data.tfds_train_split if split == "train" else data.tfds_val_split
    builder, source = _open_source(data, split_name)
    scanned = _scan(source, os.path.join(builder.data_dir, f"date_jax_scan_{split_name}.npz"), issues)
    names = list(builder.info.features["objects"]["label"].names)
    category_ids = list(COCO_CATEGORY_IDS) if len(names) == 80 and data.tfds_name.startswith("coco") else list(
        range(1, len(names) + 1))
    boxes, labels = [], []
    readable = np.flatnonzero(scanned["size"].min(axis=1) > 0)
    kept = readable[np.argsort(scanned["image_id"][readable], kind="stable")]   # image-id order, as the json source
    for i in kept:
        h, w = (int(v) for v in scanned["size"][i])
        lo, hi = scanned["offset"][i], scanned["offset"][i + 1]
        crowd = scanned["crowd"][lo:hi]
        bbox = scanned["bbox"][lo:hi].astype(np.float64)[~crowd]
        xywh = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, (bbox[:, 3] - bbox[:, 1]) * w,
                         (bbox[:, 2] - bbox[:, 0]) * h], axis=1)
        xyxy, keep = coco.clean_boxes(xywh, np.full(len(xywh), h), np.full(len(xywh), w), issues, f"record {i}")
        boxes.append(xyxy[keep])
        labels.append(scanned["label"][lo:hi][~crowd][keep])
    return coco.Annotations(
        image_ids=scanned["image_id"][kept], heights=scanned["size"][kept, 0], widths=scanned["size"][kept, 1],
        file_paths=[""] * len(kept), boxes=boxes, labels=labels, category_ids=category_ids, category_names=names,
        ann_file="", image_dir=str(builder.data_dir), read_encoded=lambda index: source[index]["image"],
        record_index=kept.astype(np.int64))
