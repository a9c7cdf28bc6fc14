"""A prepared tfds detection set (`coco/2017` or anything with its features) as per-image records with random access.

Features used: `image` (encoded), `image/id`, `objects/bbox` (normalised ymin, xmin, ymax, xmax), `objects/label`
(contiguous), `objects/is_crowd`. Records are read by index, so the batch order is planned exactly as for the json
source: through tfds's own data source for the random-access formats (ArrayRecord, Parquet), and for tfds's default
TFRecord files through an index of record offsets made by one pass over the record headers. Image sizes (from the
encoded headers) and objects are scanned once and cached beside the prepared data.
"""
from __future__ import annotations

import io
import logging
import os
import struct

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


class TFRecordSource:
    """Records of one split stored in local TFRecord shards, by index, deserialised by the builder's features.

    TFRecord framing: length (uint64 little-endian), its CRC (4 bytes), the record, the record's CRC (4 bytes).
    """

    def __init__(self, file_instructions: list, features, decoders: dict):
        self.features, self.decoders = features, decoders
        self._files: list[str] = []
        locations = []                               # (file number, offset, length) per record, in split order
        for instruction in file_instructions:
            path = os.fspath(instruction.filename)
            spans = record_spans(path)
            if len(spans) != instruction.examples_in_shard:
                raise ValueError(f"{path} holds {len(spans)} records, its tfds metadata says "
                                 f"{instruction.examples_in_shard}; the prepared files are damaged: prepare the set "
                                 f"again")
            take = len(spans) - instruction.skip if instruction.take < 0 else instruction.take
            locations += [(len(self._files), offset, length)
                          for offset, length in spans[instruction.skip:instruction.skip + take]]
            self._files.append(path)
        self._locations = np.array(locations, np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._locations)

    def __getitem__(self, index: int) -> dict:
        """The deserialised record `index` (thread-safe: each read opens its file)."""
        file_number, offset, length = (int(v) for v in self._locations[index])
        with open(self._files[file_number], "rb") as f:
            f.seek(offset)
            record = f.read(length)
        if len(record) != length:
            raise OSError(f"{self._files[file_number]} ends inside record {index}")
        return self.features.deserialize_example_np(record, decoders=self.decoders)


def record_spans(path: str) -> list[tuple[int, int]]:
    """(offset, length) of every record in the TFRecord file `path`, from its length headers alone."""
    spans, size = [], os.path.getsize(path)
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path} ends inside a record header at byte {position}; prepare the set again")
            (length,) = struct.unpack("<Q", header[:8])
            spans.append((position + 12, length))
            position += 12 + length + 4
            f.seek(position)
    if position != size:
        raise ValueError(f"{path} ends inside its last record; prepare the set again")
    return spans


def _open_source(data: ml_collections.ConfigDict, split_name: str) -> tuple:
    """(builder, random-access source with undecoded images) or a clear error on what to prepare."""
    import tensorflow_datasets as tfds

    data_dir = data.tfds_data_dir or None
    prepare = f"`tfds build {data.tfds_name}{f' --data_dir={data_dir}' if data_dir else ''}`"
    try:
        builder = tfds.builder(data.tfds_name, data_dir=data_dir)
    except Exception as e:   # tfds raises several types for unknown or unprepared names
        raise FileNotFoundError(f"tfds data set {data.tfds_name!r} not found in {data_dir or 'the tfds default dir'}"
                                f" ({e}); prepare it with {prepare} or set config.data.tfds_data_dir") from e
    if not builder.is_prepared():
        raise FileNotFoundError(f"tfds data set {data.tfds_name!r} is not prepared in {builder.data_dir}; run "
                                f"{prepare} or set config.data.tfds_data_dir")
    if split_name not in builder.info.splits:
        raise ValueError(f"tfds data set {data.tfds_name!r} has splits {list(builder.info.splits)}, not "
                         f"{split_name!r}; set config.data.tfds_train_split / tfds_val_split")
    decoders = {"image": tfds.decode.SkipDecoding()}
    formats = builder.info.available_file_formats()
    if formats & tfds.core.FileFormat.with_random_access():
        return builder, builder.as_data_source(split_name, decoders=decoders)
    if tfds.core.FileFormat.TFRECORD in formats:
        return builder, TFRecordSource(builder.info.splits[split_name].file_instructions, builder.info.features,
                                       decoders)
    raise ValueError(f"tfds data set {data.tfds_name!r} in {builder.data_dir} is stored as "
                     f"{sorted(f.value for f in formats)}, which date-jax cannot read by index; convert it with "
                     f"`tfds convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record`")


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
