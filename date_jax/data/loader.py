"""Planned batches -> batches of the docs/design.md §2 contract: `load_example` run in parallel, in order, then assembled.

tf.data serves as an ordered thread pool: one element per example of the plan, each made by `examples.load_example`
in a worker (deterministic order, no autotuning). The worker hands the example to `_ExampleSink`: its pixels are
written straight into the example's slot of its batch's image array and its other fields are kept beside it, so images
never pass through TensorFlow tensors or a stacking copy, and tf.data carries only the row number (fields carried as
tensors measured slower: benchmarks/README.md). An image that cannot be read is counted once and its slot refilled
(training: a copy of a readable example of the same batch; evaluation: a zero padding example), so a run never stops
on one image and every process yields one batch per planned serial.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Iterator, NamedTuple

import ml_collections
import numpy as np

from date_jax.data import codecs, examples, transforms
from date_jax.data.coco import Annotations
from date_jax.data.examples import BATCH_KEYS
from date_jax.data.issues import DataIssues

if TYPE_CHECKING:
    import tensorflow as tf

Batch = dict[str, np.ndarray]
FIELD_KEYS = BATCH_KEYS[1:]          # an example's fields but its image


class Planned(NamedTuple):
    """One batch of the plan, as this process loads it."""

    serial: int                      # global step (training) or batch number (evaluation)
    bucket_hw: tuple[int, int]       # padded image size of the whole batch
    indices: np.ndarray              # int64 [local batch]: image indices into the records, -1 = padding example


class _Rows(NamedTuple):
    """The examples of a list of `Planned`, flattened in load order."""

    serial: np.ndarray               # int64 [M]
    slot: np.ndarray                 # int32 [M] position in its batch
    index: np.ndarray                # int64 [M] image index, -1 = padding
    bucket_hw: np.ndarray            # int32 [M, 2]


def _rows(planned: list[Planned]) -> _Rows:
    """Flatten `planned` into one row per example."""
    return _Rows(serial=np.concatenate([np.full(len(p.indices), p.serial, np.int64) for p in planned]),
                 slot=np.concatenate([np.arange(len(p.indices), dtype=np.int32) for p in planned]),
                 index=np.concatenate([np.asarray(p.indices, np.int64) for p in planned]),
                 bucket_hw=np.concatenate([np.tile(np.array(p.bucket_hw, np.int32), (len(p.indices), 1))
                                           for p in planned]))


class _ExampleSink:
    """Where workers leave their examples: the image arrays of the planned batches (made on first use, each example
    written into its slot) and the other fields of each example until its batch is assembled."""

    def __init__(self, rows: _Rows):
        self.rows = rows
        self.batch_size = int(np.max(rows.slot, initial=0)) + 1
        self._arrays: dict[int, np.ndarray] = {}
        self._fields: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _array(self, bucket_hw: tuple[int, int]) -> np.ndarray:
        return np.empty((self.batch_size, *bucket_hw, 3), np.uint8)

    def slot(self, row: int) -> np.ndarray:
        """uint8 [H, W, 3]: `row`'s slot in the image array of its batch."""
        serial = int(self.rows.serial[row])
        with self._lock:
            images = self._arrays.get(serial)
            if images is None:
                images = self._arrays[serial] = self._array(tuple(self.rows.bucket_hw[row]))
        return images[int(self.rows.slot[row])]

    def put(self, row: int, fields: dict[str, np.ndarray]) -> None:
        """Keep the fields of `row`'s example (FIELD_KEYS plus 'loaded') until its batch is taken."""
        with self._lock:
            self._fields[row] = fields

    def take(self, serial: int, bucket_hw: tuple[int, int],
             rows: range) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """(uint8 [batch, H, W, 3] of `serial`, the fields of its `rows`), handed over and forgotten here."""
        with self._lock:
            images = self._arrays.pop(serial, None)
            fields = [self._fields.pop(row) for row in rows]
        return (self._array(bucket_hw) if images is None else images), fields


def _worker_count(config: ml_collections.ConfigDict) -> int:
    """config.data.num_parallel_calls, -1 -> one per CPU core this process may use."""
    workers = config.data.num_parallel_calls
    if workers < 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(workers)


def _example_stream(config: ml_collections.ConfigDict, records: Annotations, issues: DataIssues,
                    plan: transforms.TransformPlan, rows: _Rows, sink: _ExampleSink) -> "tf.data.Dataset":
    """tf.data over `rows` -> the row numbers, in order, each yielded once `load_example` has left its example in
    `sink` (run in parallel); an unreadable image is counted and leaves a padding example with loaded=False."""
    import cv2
    import tensorflow as tf   # the entry bootstrap (date_jax.runtime.configure) has hidden the GPUs from it

    cv2.setNumThreads(1)   # tf.data runs examples in parallel; OpenCV's own threads would only contend with it
    max_boxes = config.data.max_boxes

    def load_row(row: np.ndarray) -> np.ndarray:
        row = int(row)
        index, bucket = int(rows.index[row]), tuple(int(v) for v in rows.bucket_hw[row])
        loaded = index >= 0
        if loaded:
            try:
                example = examples.load_example(records, index, plan.take([index]), bucket, max_boxes, issues,
                                                out=sink.slot(row))
            except codecs.UnreadableImageError as e:
                issues.add_image("unreadable_image", int(records.image_ids[index]), str(e))
                loaded = False
        if not loaded:
            example = examples.padding_example(bucket, max_boxes)
            sink.slot(row)[...] = 0
        sink.put(row, dict({key: example[key] for key in FIELD_KEYS}, loaded=loaded))
        return np.int64(row)

    def load(row):
        return tf.numpy_function(load_row, [row], tf.int64, stateful=False)

    ds = tf.data.Dataset.range(len(rows.index))
    ds = ds.map(load, num_parallel_calls=_worker_count(config), deterministic=True)
    ds = ds.prefetch(max(1, config.data.prefetch) * sink.batch_size)
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning: deleting an autotuned iterator waits for its optimiser thread, up to ~17 s at every epoch end.
    options.autotune.enabled = False
    return ds.with_options(options)


def _assemble(loaded: list[dict[str, np.ndarray]], images: np.ndarray, copy_loaded_slot: bool) -> Batch:
    """One batch from its examples' fields and image array; slots whose image was not loaded are refilled with a
    loaded example of the batch (`copy_loaded_slot`, training) or stay padding examples with zero images."""
    real = [s for s, e in enumerate(loaded) if e["loaded"] and e["example_mask"]]
    fields = []
    for slot, example in enumerate(loaded):
        if not example["loaded"] and copy_loaded_slot and real:
            source = real[slot % len(real)]
            images[slot] = images[source]
            example = loaded[source]
        fields.append(example)
    batch = {"image": images}
    for key in FIELD_KEYS:
        batch[key] = np.stack([np.asarray(f[key]) for f in fields])
    return batch


def batches_of(config: ml_collections.ConfigDict, records: Annotations, issues: DataIssues,
               plan: transforms.TransformPlan, planned: list[Planned], copy_loaded_slot: bool) -> Iterator[Batch]:
    """The batches of `planned` (each example loaded by `load_example` through tf.data), in order."""
    if not planned:
        return
    rows = _rows(planned)
    sink = _ExampleSink(rows)
    stream = _example_stream(config, records, issues, plan, rows, sink).as_numpy_iterator()
    first = 0
    for entry in planned:
        batch_rows = range(first, first + len(entry.indices))
        for _ in batch_rows:                   # rows come in order: after the last, the whole batch is in the sink
            next(stream)
        images, fields = sink.take(entry.serial, entry.bucket_hw, batch_rows)
        yield _assemble(fields, images[:len(entry.indices)], copy_loaded_slot)
        first += len(entry.indices)
