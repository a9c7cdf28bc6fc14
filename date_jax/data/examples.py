"""One example: its pixels and its boxes through the same transform plan, padded to its bucket and to `max_boxes`.

`load_example` is the one place where a record becomes the fields of the docs/design.md §2 batch contract (training and
evaluation), and `prepare_image` gives an in-memory image the evaluation's test transform (the Python API). The plan
of an image (flip, resize, crop, resize; docs/spec.md §2.3) is drawn beforehand, so the output size is known before
decoding.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from date_jax.data import buckets, codecs, transforms
from date_jax.data.coco import Annotations
from date_jax.data.issues import DataIssues

Example = dict[str, np.ndarray]
BATCH_KEYS = ("image", "boxes", "labels", "box_mask", "image_shape", "image_id", "scale", "example_mask")


def fit_boxes(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes [n,4] / labels [n] -> (boxes [max_boxes,4], labels [max_boxes], box_mask [max_boxes]): beyond
    `max_boxes` the largest are kept, in their annotation order; the rest is zero padding."""
    if len(boxes) > max_boxes:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = np.sort(np.argsort(-area, kind="stable")[:max_boxes])
        boxes, labels = boxes[keep], labels[keep]
    n = len(boxes)
    padded_boxes = np.zeros((max_boxes, 4), np.float32)
    padded_labels = np.zeros(max_boxes, np.int32)
    padded_boxes[:n], padded_labels[:n] = boxes, labels
    return padded_boxes, padded_labels, np.arange(max_boxes) < n


def padding_example(bucket_hw: tuple[int, int], max_boxes: int) -> Example:
    """The fields of a padding example (example_mask False) of the bucket's shape, its image all zeros [H,W,3]."""
    return dict(image=np.zeros((*bucket_hw, 3), np.uint8), boxes=np.zeros((max_boxes, 4), np.float32),
                labels=np.zeros(max_boxes, np.int32), box_mask=np.zeros(max_boxes, bool),
                image_shape=np.array(bucket_hw, np.int32), image_id=np.int64(-1), scale=np.ones(2, np.float32),
                example_mask=np.bool_(False))


def describe(records: Annotations, index: int) -> str:
    """How a log line names image `index` of `records`: its path, or its image id for sources without files."""
    return records.file_paths[index] or f"image id {int(records.image_ids[index])}"


def read_encoded(records: Annotations, index: int) -> bytes:
    """The encoded bytes of image `index`; a missing, empty or unreadable one raises `UnreadableImageError`."""
    if records.read_encoded is None:
        return codecs.read_file(records.file_paths[index])
    record = index if records.record_index is None else int(records.record_index[index])
    try:
        data = records.read_encoded(record)
    except (OSError, ValueError, RuntimeError) as e:
        raise codecs.UnreadableImageError(f"{describe(records, index)}: {e}") from e
    if not data:
        raise codecs.UnreadableImageError(f"{describe(records, index)}: empty record (0 bytes)")
    return data


def load_example(records: Annotations, index: int, plan: transforms.TransformPlan, bucket_hw: tuple[int, int],
                 max_boxes: int, issues: DataIssues, out: np.ndarray | None = None) -> Example:
    """Image `index` of `records` read, decoded and put through its one-image `plan` together with its boxes: image
    uint8 [H,W,3] (the bucket, zero-padded; written into `out` when given), boxes [max_boxes,4], labels, box_mask,
    image_shape [2], image_id, scale [2], example_mask. Raises `UnreadableImageError` for a file that cannot be read;
    repaired channels and cut boxes are counted once per image in `issues`."""
    data = read_encoded(records, index)
    try:
        pixels = codecs.decode_rgb(data)
    except codecs.UnreadableImageError as e:
        raise codecs.UnreadableImageError(f"{describe(records, index)}: {e}") from e
    image_id = int(records.image_ids[index])
    if codecs.stored_channels(data) != 3:
        issues.add_image("channels_repaired", image_id, describe(records, index))
    if out is None:
        out = np.empty((*bucket_hw, 3), np.uint8)
    transforms.transform_image(pixels, bool(plan.flip[0]), plan.resize_hw[0], plan.crop[0], plan.out_hw[0], out=out)
    heights, widths = records.heights[index:index + 1], records.widths[index:index + 1]
    moved, keep = transforms.transform_boxes(records.boxes[index], np.zeros(len(records.boxes[index]), np.int64),
                                             heights, widths, plan)
    moved, labels = moved[keep], records.labels[index][keep]
    if len(moved) > max_boxes:
        issues.add_image("too_many_boxes", image_id, f"image id {image_id} with {len(moved)} boxes > max_boxes="
                         f"{max_boxes}")
    boxes, labels, box_mask = fit_boxes(moved, labels, max_boxes)
    return dict(image=out, boxes=boxes, labels=labels, box_mask=box_mask, image_shape=plan.out_hw[0].astype(np.int32),
                image_id=np.int64(image_id), scale=plan.scale(heights, widths)[0], example_mask=np.bool_(True))


def prepare_image(image: np.ndarray,
                  data: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An in-memory uint8 RGB image [h,w,3] with the test transform of `config.data` -> (image padded to its bucket
    uint8 [H,W,3], image_shape [2] int32 (the resized size), scale [2] float32 (resized / original, h and w))."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3] with H, W >= 1; got {image.dtype} {image.shape}")
    scales = transforms.scales_from_config(data)
    heights, widths = np.array([image.shape[0]], np.int32), np.array([image.shape[1]], np.int32)
    plan = transforms.plan_test(heights, widths, scales)
    bucket = buckets.bucket_shapes(plan.out_hw, scales.test_short, scales.max_size, data.bucket_divisor)[0]
    padded = transforms.transform_image(np.ascontiguousarray(image), False, plan.resize_hw[0], plan.crop[0],
                                        plan.out_hw[0], bucket)
    return padded, plan.out_hw[0].astype(np.int32), plan.scale(heights, widths)[0]


def read_image(path: str) -> np.ndarray:
    """The image file `path` as uint8 RGB [h,w,3]; a missing, empty or undecodable file raises
    `UnreadableImageError` naming it."""
    data = codecs.read_file(path)
    try:
        return codecs.decode_rgb(data)
    except codecs.UnreadableImageError as e:
        raise codecs.UnreadableImageError(f"{path}: {e}") from e
