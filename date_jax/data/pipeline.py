"""A data set split -> batches of the docs/design.md §2 contract: planned in numpy, loaded example by example (`loader`).

The order of training batches is a function of (config.seed, epoch) only: each epoch's permutation and every image's
augmentation parameters are drawn in numpy from (seed, epoch) per image index, so output sizes and buckets are known
before decoding and the batches are lists of image indices. `train_batches(config, start_step=k)` therefore yields
exactly the k-th and later batches of a fresh run. Every process plans the same global batches and loads its own
disjoint slice; an unreadable image is skipped (its slot refilled) and counted once, so a run never stops on one.
Loading never writes: the synthetic set is made beforehand by `synthetic.prepare`.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Iterator

import ml_collections
import numpy as np

from date_jax.data import buckets as buckets_lib
from date_jax.data import coco, loader, prefetch, synthetic, transforms
from date_jax.data.issues import DataIssues
from date_jax.data.loader import Batch, Planned


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the loop and the evaluator need to know about a split."""

    ann_file: str                   # COCO json of the split ('' for tfds)
    image_dir: str
    num_images: int                 # after the training filters for 'train'
    category_ids: tuple[int, ...]   # original ids in label order
    category_names: tuple[str, ...]


_LOADED: dict[tuple, tuple[coco.Annotations, DataIssues]] = {}


def _split_paths(data: ml_collections.ConfigDict, split: str) -> tuple[str, str]:
    """(annotation file, image folder) of `split` for the file-based sources."""
    if data.source == "synthetic":
        return synthetic.split_paths(data.root, split)
    ann, images = (data.train_ann, data.train_images) if split == "train" else (data.val_ann, data.val_images)
    return os.path.join(data.root, ann), os.path.join(data.root, images)


def _cache_key(data: ml_collections.ConfigDict, split: str) -> tuple:
    """What identifies a loaded split: the source settings of `config.data`."""
    return (data.source, data.root, split, data.train_ann, data.train_images, data.val_ann, data.val_images,
            data.tfds_name, data.tfds_data_dir, data.tfds_train_split, data.tfds_val_split, data.check_files)


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[coco.Annotations, DataIssues]:
    """Records of `split` ('train' | 'val') after the annotation rules (cached per process) and their issue counter."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = config.data
    key = _cache_key(data, split)
    if key in _LOADED:
        return _LOADED[key]
    issues = DataIssues(f"{data.source}:{split}")
    if data.source in ("coco", "synthetic"):
        if data.source == "synthetic":
            synthetic.check_prepared(data.root)
        ann_file, image_dir = _split_paths(data, split)
        records = coco.load_coco_annotations(ann_file, image_dir, issues, check_files=data.check_files)
    elif data.source == "tfds":
        from date_jax.data import tfds_source
        records = tfds_source.load_tfds_annotations(data, split, issues)
    else:
        raise ValueError(f"config.data.source={data.source!r}; choose 'coco', 'tfds' or 'synthetic'")
    if split == "train":
        records = records.with_training_boxes(issues)
        if len(records) == 0:
            raise ValueError(f"{data.source} {split} split has no image with a usable box ({issues.summary()})")
    issues.log_summary()
    _LOADED[key] = (records, issues)
    return records, issues


def dataset_info(config: ml_collections.ConfigDict, split: str) -> DatasetInfo:
    """Paths, image count (after training filters) and categories of `split` ('train' | 'val')."""
    records, _ = load_split(config, split)
    return DatasetInfo(ann_file=records.ann_file, image_dir=records.image_dir, num_images=len(records),
                       category_ids=tuple(records.category_ids), category_names=tuple(records.category_names))


def _process_share(global_batch: int, process_index: int | None, process_count: int | None,
                   key: str) -> tuple[int, int]:
    """(first slot, slots) of this process in a global batch of `global_batch`."""
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count or not 0 <= process_index < process_count:
        raise ValueError(f"config.data.{key}={global_batch} must be a positive multiple of the process count "
                         f"({process_count}) and process_index={process_index} within it")
    local = global_batch // process_count
    return process_index * local, local


def _seed(config: ml_collections.ConfigDict) -> int:
    """config.seed as a non-negative numpy seed."""
    return int(config.seed) % 2**32


def epoch_plan(config: ml_collections.ConfigDict, records: coco.Annotations,
               epoch: int) -> tuple[transforms.TransformPlan, list[buckets_lib.Batch]]:
    """Training transforms of every image and the epoch's global batches (bucket, indices), from (seed, epoch)."""
    scales = transforms.scales_from_config(config.data)
    order = np.random.default_rng([_seed(config), epoch]).permutation(len(records))
    plan = transforms.plan_train(records.heights, records.widths, scales,
                                 np.random.default_rng([_seed(config), epoch, 1]))
    shapes = buckets_lib.bucket_shapes(plan.out_hw, scales.max_train_short, scales.max_size, config.data.bucket_divisor)
    batches, _ = buckets_lib.group_into_batches(order, shapes, config.data.batch_size)
    if not batches:
        raise ValueError(f"no bucket of the {len(records)} training images holds config.data.batch_size="
                         f"{config.data.batch_size} images; lower the batch size or raise config.data.bucket_divisor")
    return plan, batches


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[Batch]:
    """Endless training batches (this process's share of each global batch), from global step `start_step` on.

    The next epoch's plan and tf.data pipeline are built in a background thread while the last
    `config.data.prefetch` + 1 batches of the current epoch are consumed, so an epoch boundary costs no wait.
    """
    records, issues = load_split(config, "train")
    first, local = _process_share(config.data.batch_size, process_index, process_count, "batch_size")
    serial = 0

    def epoch_batches(epoch: int, serial: int) -> tuple[int, Iterator[Batch]]:
        """(batches in the epoch, an iterator over those at or after start_step)."""
        plan, batches = epoch_plan(config, records, epoch)
        planned = [Planned(serial + k, bucket, indices[first:first + local])
                   for k, (bucket, indices) in enumerate(batches) if serial + k >= start_step]
        return len(batches), loader.batches_of(config, records, issues, plan, planned, copy_loaded_slot=True)

    lookahead = max(1, config.data.prefetch) + 1
    size, current = epoch_batches(0, serial)
    upcoming = None
    try:
        for epoch in itertools.count():
            remaining = size - max(0, start_step - serial)
            for k, batch in enumerate(current):
                if upcoming is None and remaining - k <= lookahead:
                    upcoming_size, upcoming_batches = epoch_batches(epoch + 1, serial + size)
                    upcoming = upcoming_size, prefetch.Background(upcoming_batches, 1)
                yield batch
            issues.log_summary()
            serial += size
            size, current = upcoming if upcoming is not None else epoch_batches(epoch + 1, serial)
            upcoming = None
    finally:   # the consumer stopped: the thread building the next epoch stops too
        for stream in (current, upcoming[1] if upcoming else None):
            if isinstance(stream, prefetch.Background):
                stream.close()


def eval_batches(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                 process_count: int | None = None, num_images: int = 0) -> Iterator[Batch]:
    """Validation batches (first `num_images` if > 0) in a fixed order with the test transform; the last of each
    bucket is padded with example_mask=False examples, and every process yields the same number of batches."""
    records, issues = load_split(config, "val")
    if num_images > 0:
        records = records.subset(np.arange(min(num_images, len(records))))
    first, local = _process_share(config.data.eval_batch_size, process_index, process_count, "eval_batch_size")
    scales = transforms.scales_from_config(config.data)
    plan = transforms.plan_test(records.heights, records.widths, scales)
    shapes = buckets_lib.bucket_shapes(plan.out_hw, scales.test_short, scales.max_size, config.data.bucket_divisor)
    global_batch = config.data.eval_batch_size
    full, leftovers = buckets_lib.group_into_batches(np.arange(len(records)), shapes, global_batch)
    padded = [(bucket, np.concatenate([idx, np.full(global_batch - len(idx), -1)])) for bucket, idx in leftovers]
    planned = [Planned(serial, bucket, indices[first:first + local])
               for serial, (bucket, indices) in enumerate(full + padded)]
    yield from loader.batches_of(config, records, issues, plan, planned, copy_loaded_slot=False)
    issues.log_summary()


def log_issue_summary(config: ml_collections.ConfigDict, split: str = "train") -> str:
    """At the end of a run: log one line with every data issue of `split` counted so far (each image once), and
    return it ('' when nothing was wrong or the split was never loaded)."""
    loaded = _LOADED.get(_cache_key(config.data, split))
    return loaded[1].log_summary(final=True) if loaded else ""


def resolve_num_classes(config: ml_collections.ConfigDict) -> int:
    """The class count for the model: the training annotations' category count when config.model.num_classes is 0,
    else config.model.num_classes after checking that it equals that count (ValueError naming both and the fix)."""
    info = dataset_info(config, "train")
    found, configured = len(info.category_ids), int(config.model.num_classes)
    where = info.ann_file or f"tfds {config.data.tfds_name}"
    if found == 0:
        raise ValueError(f"{where} defines no categories; a COCO json lists them under 'categories'")
    if configured not in (0, found):
        raise ValueError(f"config.model.num_classes={configured} but {where} has {found} categories; pass "
                         f"--config.model.num_classes={found} (or 0 to read it from the annotation file)")
    return found
