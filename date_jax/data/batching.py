"""Planned batches -> tf.data elements (read, decode, transform, pad) -> batches of the DESIGN §4 contract.

A list of planned batches (serial, bucket, image indices; index -1 = evaluation padding) becomes flat numpy arrays, one
row per example, with the boxes already transformed in numpy. tf.data reads and decodes in parallel in a deterministic
order; an element whose image cannot be read or decoded is dropped there, and the assembler refills its slot (a copy of
a readable image of the same batch in training, a padding example in evaluation), so a run never stops on one image
and every process yields one batch per planned serial.
"""
from __future__ import annotations

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
    """One row per example of `planned`: where to read it, how to transform it, its boxes (flat + row lengths)."""
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
    return dict(
        serial=serial, slot=slot, path=np.array([records.file_paths[i].encode() if r else b"" for i, r in
                                                 zip(index, real)], object),
        record_index=np.where(real, record_index, -1).astype(np.int64), flip=plan.flip[safe] & real,
        resize_hw=np.where(col, plan.resize_hw[safe], 1).astype(np.int32),
        crop=np.where(col, plan.crop[safe], [0, 0, 1, 1]).astype(np.int32), out_hw=out_hw, bucket_hw=bucket,
        image_shape=np.where(col, out_hw, bucket).astype(np.int32),
        image_id=np.where(real, records.image_ids[safe], -1).astype(np.int64), scale=scale, example_mask=real,
        boxes=moved[selected], labels=labels[selected].astype(np.int32),
        row_lengths=np.bincount(owner[selected], minlength=m).astype(np.int64))


def _stored_channels(data: "tf.Tensor") -> "tf.Tensor":
    """TF: channels an encoded JPEG or PNG stores, read from its header (3 for other formats)."""
    import tensorflow as tf

    def png_channels():   # IHDR colour type (byte 25): 0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA
        colour_type = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 25, 1), tf.uint8)[0], tf.int32)
        return tf.gather([1, 3, 3, 3, 2, 3, 4], tf.minimum(colour_type, 6))

    is_png = tf.equal(tf.strings.substr(data, 0, 4), b"\x89PNG") & (tf.strings.length(data) > 25)
    return tf.case([(tf.io.is_jpeg(data), lambda: tf.io.extract_jpeg_shape(data)[2]), (is_png, png_channels)],
                   default=lambda: tf.constant(3))


def _decode_rgb(data: "tf.Tensor") -> tuple["tf.Tensor", "tf.Tensor"]:
    """TF: encoded JPEG/PNG/BMP/GIF bytes -> (uint8 [h,w,3] RGB, stored channel count); b'' -> one black pixel.

    Grayscale is replicated, alpha dropped and CMYK converted by the decoder (channels=3)."""
    import tensorflow as tf

    def decode():
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return image, _stored_channels(data)

    return tf.cond(tf.strings.length(data) > 0, decode, lambda: (tf.zeros([1, 1, 3], tf.uint8), tf.constant(3)))


def tf_elements(config: ml_collections.ConfigDict, elements: dict[str, np.ndarray],
                records: coco.Annotations) -> "tf.data.Dataset":
    """tf.data over `elements`: parallel deterministic read/decode/transform/pad; unreadable images dropped."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")   # the accelerators belong to JAX
    except (RuntimeError, ValueError):
        pass
    max_boxes = config.data.max_boxes
    columns = {k: v for k, v in elements.items() if k not in ("boxes", "labels", "row_lengths")}
    columns["boxes"] = tf.RaggedTensor.from_row_lengths(elements["boxes"], elements["row_lengths"])
    columns["labels"] = tf.RaggedTensor.from_row_lengths(elements["labels"], elements["row_lengths"])
    read_encoded = records.read_encoded

    def read(example):
        if read_encoded is None:
            return tf.cond(tf.strings.length(example["path"]) > 0, lambda: tf.io.read_file(example["path"]),
                           lambda: tf.constant(b""))
        encoded = tf.numpy_function(lambda i: read_encoded(int(i)) if i >= 0 else b"", [example["record_index"]],
                                    tf.string, stateful=False)
        return tf.reshape(encoded, [])

    def load(example):
        image, channels = _decode_rgb(read(example))
        image = transforms.transform_image(image, example["flip"], example["resize_hw"], example["crop"],
                                           example["out_hw"])
        pad = example["bucket_hw"] - example["out_hw"]
        image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
        boxes, labels = example["boxes"], example["labels"]
        if isinstance(boxes, tf.RaggedTensor):
            boxes, labels = boxes.to_tensor(), labels.to_tensor()
        n = tf.shape(labels)[0]
        return dict(serial=example["serial"], slot=example["slot"], path=example["path"], image=image,
                    channels=channels, boxes=tf.pad(boxes, [[0, max_boxes - n], [0, 0]]),
                    labels=tf.pad(labels, [[0, max_boxes - n]]), box_mask=tf.range(max_boxes) < n,
                    image_shape=example["image_shape"], image_id=example["image_id"], scale=example["scale"],
                    example_mask=example["example_mask"])

    local_batch = int(np.max(elements["slot"], initial=0)) + 1
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.map(load, num_parallel_calls=config.data.num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors()
    ds = ds.prefetch(max(1, config.data.prefetch) * local_batch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _blank_example(bucket: tuple[int, int], max_boxes: int) -> dict[str, np.ndarray]:
    """A padding example (example_mask False) of the bucket's shape."""
    return dict(image=np.zeros((*bucket, 3), np.uint8), boxes=np.zeros((max_boxes, 4), np.float32),
                labels=np.zeros(max_boxes, np.int32), box_mask=np.zeros(max_boxes, bool),
                image_shape=np.array(bucket, np.int32), image_id=np.int64(-1), scale=np.ones(2, np.float32),
                example_mask=np.bool_(False))


class Assembler:
    """Groups decoded elements by batch serial and refills the slots of images that tf.data dropped."""

    def __init__(self, records: coco.Annotations, issues: DataIssues, max_boxes: int, copy_valid_slot: bool):
        self.records, self.issues, self.max_boxes = records, issues, max_boxes
        self.copy_valid_slot = copy_valid_slot      # training: refill with a readable image of the same batch

    def _finish(self, planned: Planned, slots: dict[int, dict]) -> Batch:
        _, bucket, indices = planned
        for slot, index in enumerate(indices):
            if slot in slots:
                if int(slots[slot]["channels"]) != 3:
                    self.issues.add("channels_repaired", slots[slot]["path"].decode())
            elif index >= 0:
                self.issues.add("unreadable_image", self.records.file_paths[index] or
                                f"image id {int(self.records.image_ids[index])}")
        valid = [slots[s] for s in sorted(slots) if bool(slots[s]["example_mask"])]
        examples = []
        for slot in range(len(indices)):
            if slot in slots:
                examples.append(slots[slot])
            elif self.copy_valid_slot and valid:
                examples.append(valid[slot % len(valid)])
            else:
                examples.append(_blank_example(bucket, self.max_boxes))
        return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in BATCH_KEYS}

    def batches(self, planned: list[Planned], ds) -> Iterator[Batch]:
        """One batch per entry of `planned`, in order, from the elements of `ds` (some may be missing)."""
        position, slots = 0, {}
        for element in ds.as_numpy_iterator():
            serial = int(element["serial"])
            while planned[position][0] != serial:     # everything before `serial` has arrived
                yield self._finish(planned[position], slots)
                position, slots = position + 1, {}
            slots[int(element["slot"])] = element
        for entry in planned[position:]:
            yield self._finish(entry, slots)
            slots = {}


def batches_of(config: ml_collections.ConfigDict, records: coco.Annotations, issues: DataIssues,
               plan: transforms.TransformPlan, planned: list[Planned], copy_valid_slot: bool) -> Iterator[Batch]:
    """The batches of `planned` (decoded through tf.data and assembled), in order."""
    if not planned:
        return
    elements = planned_elements(records, plan, planned, config.data.max_boxes, issues)
    assembler = Assembler(records, issues, config.data.max_boxes, copy_valid_slot)
    yield from assembler.batches(planned, tf_elements(config, elements, records))
