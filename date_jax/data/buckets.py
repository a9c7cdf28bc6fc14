"""Static padded shapes: each image's bucket, and batches whose images all share one bucket (aspect-ratio grouping).

The bucket of an image is its output size at the pipeline's largest scale, rounded up to multiples of
`bucket_divisor`. It therefore depends on the aspect ratio (and orientation) only, not on the random scale, so a run
sees a few static shapes (one compile each) and every image fits its bucket. Grouping images of one bucket into a batch
is what mmdetection's GroupSampler does for landscape / portrait.
"""
from __future__ import annotations

import numpy as np

from date_jax.data.transforms import rescale_size

Batch = tuple[tuple[int, int], np.ndarray]     # (bucket (H, W), image indices)


def bucket_shapes(out_hw: np.ndarray, max_short: int, max_size: int, divisor: int) -> np.ndarray:
    """Padded (H, W) int32 [N, 2] for output sizes out_hw [N, 2]: the largest-scale size, rounded up to `divisor`."""
    out_hw = np.asarray(out_hw, np.int64).reshape(-1, 2)
    largest = np.maximum(rescale_size(out_hw[:, 0], out_hw[:, 1], max_short, max_size), out_hw)
    return (-(-largest // divisor) * divisor).astype(np.int32)


def group_into_batches(order: np.ndarray, buckets: np.ndarray,
                       batch_size: int) -> tuple[list[Batch], list[Batch]]:
    """Walk `order` [N] and cut a batch whenever `batch_size` images of one bucket (buckets [N,2]) have been seen.

    Returns (full batches as (bucket (H, W), image indices [batch_size]) in completion order, the incomplete
    leftover of each bucket as (bucket, indices [< batch_size]) in order of first appearance).
    """
    pending: dict[tuple[int, int], list[int]] = {}
    batches = []
    for index in np.asarray(order, np.int64):
        key = (int(buckets[index, 0]), int(buckets[index, 1]))
        group = pending.setdefault(key, [])
        group.append(int(index))
        if len(group) == batch_size:
            batches.append((key, np.array(group, np.int64)))
            pending[key] = []
    leftovers = [(key, np.array(g, np.int64)) for key, g in pending.items() if g]
    return batches, leftovers
