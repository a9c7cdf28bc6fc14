"""Planned batches -> tf.data elements (read, decode, transform, pad) -> batches of the DESIGN §4 contract.

A list of planned batches (serial, bucket, image indices; index -1 = evaluation padding) becomes numpy arrays, one
row per example, with the boxes already transformed and padded in numpy. tf.data runs one numpy function per row in
parallel and in a deterministic order: read, decode (OpenCV), transform and pad, writing the pixels straight into the
row's slot of its batch's image array (`ImageSink`). A row whose image cannot be read or decoded is dropped there, and
the assembler refills its slot (a copy of a readable image of the same batch in training, zeros and a padding example
in evaluation), so a run never stops on one image and every process yields one batch per planned serial.
"""
from __future__ import annotations

import io
import os
import threading
from typing import TYPE_CHECKING, Iterator

import ml_collections
import numpy as np

from date_jax.data import coco, transforms
from date_jax.data.issues import DataIssues

if TYPE_CHECKING:
    import tensorflow as tf

Batch = dict[str, np.ndarray]
Planned = tuple[int, tuple[int, int], np.ndarray]      # (serial, bucket (H, W), image indices of this process)
BATCH_KEYS = ("image", "boxes", "labels", "box_mask", "image_shape", "image_id", "scale", "example_mask")


def planned_elements(records: coco.Annotations, plan: transforms.TransformPlan, planned: list[Planned],
                     max_boxes: int, issues: DataIssues) -> dict[str, np.ndarray]:
    """One row per example of `planned`: where to read it, how to transform it, its boxes padded to `max_boxes`."""
    index = np.concatenate([p[2] for p in planned]).astype(np.int64)
    m = len(index)
    serial = np.concatenate([np.full(len(p[2]), p[0], np.int64) for p in planned])
    slot = np.concatenate([np.arange(len(p[2]), dtype=np.int32) for p in planned])
    bucket = np.concatenate([np.tile(np.array(p[1], np.int32), (len(p[2]), 1)) for p in planned])
    real = index >= 0
    safe = np.where(real, index, 0)
    col = real[:, None]
    out_hw = np.where(col, plan.out_hw[safe], 1).astype(np.int32)
    scale = np.where(col, plan.scale(records.heights, records.widths)[safe], 1).astype(np.float32)
    record_index = safe if records.record_index is None else records.record_index[safe]

    counts = np.array([len(records.boxes[i]) if r else 0 for i, r in zip(index, real)], np.int64)
    owner = np.repeat(np.arange(m), counts)
    flat = np.concatenate([records.boxes[i] for i in index[real]] + [np.zeros((0, 4), np.float32)])
    labels = np.concatenate([records.labels[i] for i in index[real]] + [np.zeros(0, np.int32)])
    moved, keep = transforms.transform_boxes(flat, safe[owner], records.heights, records.widths, plan)
    moved, labels, owner = moved[keep], labels[keep], owner[keep]
    # more than max_boxes: keep the largest, in their annotation order
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    by_size = np.lexsort((-area, owner))
    first_of_owner = np.searchsorted(owner[by_size], owner[by_size], side="left")
    selected = np.sort(by_size[np.arange(len(by_size)) - first_of_owner < max_boxes])
    kept_counts = np.bincount(owner, minlength=m)
    if (kept_counts > max_boxes).any():
        worst = int(np.argmax(kept_counts))
        issues.add("too_many_boxes", f"image id {int(records.image_ids[index[worst]])} with {kept_counts[worst]} "
                   f"boxes > max_boxes={max_boxes}", int((kept_counts > max_boxes).sum()))
    owner_of, boxes_in = owner[selected], np.arange(len(selected))
    position = boxes_in - np.searchsorted(owner_of, owner_of, side="left")    # owner is sorted: rank within image
    boxes = np.zeros((m, max_boxes, 4), np.float32)
    labels_out = np.zeros((m, max_boxes), np.int32)
    box_mask = np.zeros((m, max_boxes), bool)
    boxes[owner_of, position] = moved[selected]
    labels_out[owner_of, position] = labels[selected]
    box_mask[owner_of, position] = True
    return dict(
        serial=serial, slot=slot, path=np.array([records.file_paths[i] if r else "" for i, r in zip(index, real)],
                                                object),
        record_index=np.where(real, record_index, -1).astype(np.int64), flip=plan.flip[safe] & real,
        resize_hw=np.where(col, plan.resize_hw[safe], 1).astype(np.int32),
        crop=np.where(col, plan.crop[safe], [0, 0, 1, 1]).astype(np.int32), out_hw=out_hw, bucket_hw=bucket,
        image_shape=np.where(col, out_hw, bucket).astype(np.int32),
        image_id=np.where(real, records.image_ids[safe], -1).astype(np.int64), scale=scale, example_mask=real,
        boxes=boxes, labels=labels_out, box_mask=box_mask)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}          # IHDR colour type -> channels (palette decodes to RGB)
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # SOF0-SOF15 (not DHT, JPG, DAC)


def _jpeg_components(data: bytes) -> int | None:
    """Components of a JPEG's frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK), walking the marker segments; None if
    the stream ends first."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:            # fill byte
            i += 1
        elif marker in JPEG_FRAME_MARKERS:
            return data[i + 9]
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:   # TEM, RSTn: no length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def stored_channels(data: bytes) -> int:
    """Channels an encoded image stores (1 gray, 2 gray + alpha, 3 RGB or palette, 4 RGBA or CMYK): read from the
    JPEG frame or PNG header, else by Pillow."""
    from PIL import Image

    if data[:2] == b"\xff\xd8":
        components = _jpeg_components(data)
        if components is not None:
            return components
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[25] in PNG_CHANNELS:
        return PNG_CHANNELS[data[25]]
    try:
        with Image.open(io.BytesIO(data)) as image:
            return 3 if image.mode == "P" else len(image.getbands())
    except (OSError, ValueError):     # a format Pillow does not know: OpenCV decoded it to 3 channels
        return 3


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG/BMP bytes -> uint8 [h,w,3] RGB (OpenCV, as mmcv reads images; EXIF orientation ignored, so
    pixels stay in the frame the annotations use). Grayscale is replicated, alpha dropped and CMYK converted."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"cannot decode {len(data)} bytes as an image")
    return image


def load_pixels(data: bytes, flip: bool, resize_hw: np.ndarray, crop: np.ndarray, out_hw: np.ndarray,
                out: np.ndarray) -> None:
    """Encoded image -> transformed and zero-padded into `out` uint8 [H,W,3]; b'' (a padding slot) -> zeros."""
    if not data:
        out[...] = 0
        return
    transforms.transform_image(decode_rgb(data), bool(flip), resize_hw, crop, out_hw, out=out)


class ImageSink:
    """The image arrays of the planned batches, made on first use: tf.data's workers decode straight into their
    slots, so images never pass through TensorFlow tensors or a stacking copy."""

    def __init__(self, elements: dict[str, np.ndarray]):
        self.elements = elements
        self.batch_size = int(np.max(elements["slot"], initial=0)) + 1
        self._arrays: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _array(self, bucket_hw: tuple[int, int]) -> np.ndarray:
        return np.empty((self.batch_size, *bucket_hw, 3), np.uint8)

    def slot(self, row: int) -> np.ndarray:
        """uint8 [H, W, 3]: `row`'s slot in the image array of its batch."""
        serial = int(self.elements["serial"][row])
        with self._lock:
            images = self._arrays.get(serial)
            if images is None:
                images = self._arrays[serial] = self._array(tuple(self.elements["bucket_hw"][row]))
        return images[int(self.elements["slot"][row])]

    def take(self, serial: int, bucket_hw: tuple[int, int]) -> np.ndarray:
        """uint8 [batch, H, W, 3] of `serial` (uninitialised where no row wrote), handed over and forgotten here."""
        with self._lock:
            images = self._arrays.pop(serial, None)
        return self._array(bucket_hw) if images is None else images


def tf_elements(config: ml_collections.ConfigDict, elements: dict[str, np.ndarray], records: coco.Annotations,
                sink: ImageSink) -> "tf.data.Dataset":
    """tf.data over the rows of `elements` -> {row, channels}: each row read, decoded, transformed and padded into
    its slot of `sink` by one numpy function, in parallel and in order; rows that fail are dropped."""
    import cv2
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")   # the accelerators belong to JAX
    except (RuntimeError, ValueError):
        pass
    cv2.setNumThreads(1)   # tf.data runs images in parallel; OpenCV's own threads would only contend with it
    read_encoded = records.read_encoded

    def load_row(row: np.ndarray) -> np.ndarray:
        row = int(row)
        if not elements["example_mask"][row]:
            data = b""
        elif read_encoded is not None:
            data = read_encoded(int(elements["record_index"][row]))
        else:
            with open(elements["path"][row], "rb") as f:
                data = f.read()
        load_pixels(data, elements["flip"][row], elements["resize_hw"][row], elements["crop"][row],
                    elements["out_hw"][row], sink.slot(row))
        return np.int32(stored_channels(data) if data else 3)

    def load(row):
        channels = tf.numpy_function(load_row, [row], tf.int32, stateful=False)
        return dict(row=row, channels=channels)

    ds = tf.data.Dataset.range(len(elements["slot"]))
    workers = config.data.num_parallel_calls
    if workers < 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ds = ds.map(load, num_parallel_calls=workers, deterministic=True)
    ds = ds.ignore_errors()
    ds = ds.prefetch(max(1, config.data.prefetch) * sink.batch_size)
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning: deleting an autotuned iterator waits for its optimiser thread, up to ~17 s at every epoch end.
    options.autotune.enabled = False
    return ds.with_options(options)


def _blank_example(bucket: tuple[int, int], max_boxes: int) -> dict[str, np.ndarray]:
    """The fields of a padding example (example_mask False) of the bucket's shape, but its (zero) image."""
    return dict(boxes=np.zeros((max_boxes, 4), np.float32), labels=np.zeros(max_boxes, np.int32),
                box_mask=np.zeros(max_boxes, bool), image_shape=np.array(bucket, np.int32), image_id=np.int64(-1),
                scale=np.ones(2, np.float32), example_mask=np.bool_(False))


class Assembler:
    """Groups decoded rows by batch serial and refills the slots of images that tf.data dropped."""

    def __init__(self, records: coco.Annotations, issues: DataIssues, elements: dict[str, np.ndarray],
                 sink: ImageSink, max_boxes: int, copy_valid_slot: bool):
        self.records, self.issues, self.elements, self.sink = records, issues, elements, sink
        self.max_boxes = max_boxes
        self.copy_valid_slot = copy_valid_slot      # training: refill with a readable image of the same batch

    def _finish(self, planned: Planned, slots: dict[int, dict]) -> Batch:
        serial, bucket, indices = planned
        for slot, index in enumerate(indices):
            if slot in slots:
                if int(slots[slot]["channels"]) != 3:
                    self.issues.add("channels_repaired", self.elements["path"][slots[slot]["row"]])
            elif index >= 0:
                self.issues.add("unreadable_image", self.records.file_paths[index] or
                                f"image id {int(self.records.image_ids[index])}")
        images = self.sink.take(serial, bucket)[:len(indices)]
        valid = [s for s in sorted(slots) if self.elements["example_mask"][slots[s]["row"]]]
        rows = []
        for slot in range(len(indices)):
            if slot in slots:
                rows.append(slots[slot]["row"])
            elif self.copy_valid_slot and valid:
                source = valid[slot % len(valid)]
                images[slot] = images[source]
                rows.append(slots[source]["row"])
            else:
                images[slot] = 0
                rows.append(None)
        blank = _blank_example(bucket, self.max_boxes)
        batch = {"image": images}
        for key in BATCH_KEYS[1:]:
            batch[key] = np.stack([blank[key] if row is None else self.elements[key][row] for row in rows])
        return batch

    def batches(self, planned: list[Planned], ds) -> Iterator[Batch]:
        """One batch per entry of `planned`, in order, from the rows of `ds` (some may be missing)."""
        position, slots = 0, {}
        for element in ds.as_numpy_iterator():
            row = int(element["row"])
            element["row"] = row
            serial = int(self.elements["serial"][row])
            while planned[position][0] != serial:     # everything before `serial` has arrived
                yield self._finish(planned[position], slots)
                position, slots = position + 1, {}
            slots[int(self.elements["slot"][row])] = element
        for entry in planned[position:]:
            yield self._finish(entry, slots)
            slots = {}


def batches_of(config: ml_collections.ConfigDict, records: coco.Annotations, issues: DataIssues,
               plan: transforms.TransformPlan, planned: list[Planned], copy_valid_slot: bool) -> Iterator[Batch]:
    """The batches of `planned` (decoded through tf.data into their image arrays and assembled), in order."""
    if not planned:
        return
    elements = planned_elements(records, plan, planned, config.data.max_boxes, issues)
    sink = ImageSink(elements)
    assembler = Assembler(records, issues, elements, sink, config.data.max_boxes, copy_valid_slot)
    yield from assembler.batches(planned, tf_elements(config, elements, records, sink))
