"""DATE augmentations (docs/spec.md §2.3): random parameters and box geometry in numpy, the pixel work in OpenCV.

Every image goes through the same chain, with some steps being identities:
flip (original frame) -> keep-ratio resize to `resize_hw` -> integer crop `crop` = (y0, x0, h, w) of that -> resize to
`out_hw`. 1x and test: the crop is the whole image and `out_hw == resize_hw`. 3x / CrowdHuman ("DETR strategy"): flip,
then policy (a) multi-scale resize, or (b) resize with a small short side -> `absolute_range` random crop -> multi-scale
resize. Parameters are drawn per image in numpy, so the output size (and hence the bucket) is known before decoding.
Pixels are resized with OpenCV's bilinear filter (half-pixel centres, no antialiasing), as mmcv's `imresize` does.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

STANDARD_SHORT_SIZES = {
    "1x": (800,),
    "3x": tuple(range(480, 801, 32)),
    "crowdhuman": tuple(range(640, 897, 32)),
}
STANDARD_CROP_SHORT_SIZES = (400, 500, 600)


@dataclasses.dataclass(frozen=True)
class Scales:
    """Resolved sizes of one pipeline (the config's empty tuples replaced by the pipeline's standard values)."""

    train_short: tuple[int, ...]
    crop_short: tuple[int, ...]
    crop_size: tuple[int, int]
    max_size: int
    test_short: int
    two_policy: bool
    flip_prob: float

    @property
    def max_train_short(self) -> int:
        return max(self.train_short)


def scales_from_config(data: ml_collections.ConfigDict) -> Scales:
    """Scales for `config.data` (keys pipeline, train_short_sizes, crop_short_sizes, crop_size, max_size, ...)."""
    if data.pipeline not in STANDARD_SHORT_SIZES:
        raise ValueError(f"config.data.pipeline={data.pipeline!r}; choose one of {sorted(STANDARD_SHORT_SIZES)}")
    train_short = tuple(int(s) for s in data.train_short_sizes) or STANDARD_SHORT_SIZES[data.pipeline]
    crop_short = tuple(int(s) for s in data.crop_short_sizes) or STANDARD_CROP_SHORT_SIZES
    lo, hi = (int(v) for v in data.crop_size)
    if not (0 < lo <= hi) or min(train_short + crop_short) <= 0 or data.max_size <= 0 or data.test_short_size <= 0:
        raise ValueError(f"config.data sizes must be positive with crop_size lo <= hi; got train_short_sizes="
                         f"{train_short}, crop_short_sizes={crop_short}, crop_size={(lo, hi)}, "
                         f"max_size={data.max_size}, test_short_size={data.test_short_size}")
    return Scales(train_short=train_short, crop_short=crop_short, crop_size=(lo, hi), max_size=int(data.max_size),
                  test_short=int(data.test_short_size), two_policy=data.pipeline != "1x",
                  flip_prob=float(data.flip_prob))


def rescale_size(heights: np.ndarray, widths: np.ndarray, short: np.ndarray | int,
                 long: np.ndarray | int) -> np.ndarray:
    """Keep-ratio size fitting (long, short) as mmcv `rescale_size`: int32 [..., 2] (h, w) for sizes [...]."""
    h = np.asarray(heights, np.float64)
    w = np.asarray(widths, np.float64)
    factor = np.minimum(np.asarray(long, np.float64) / np.maximum(h, w),
                        np.asarray(short, np.float64) / np.minimum(h, w))
    return np.stack([np.floor(h * factor + 0.5), np.floor(w * factor + 0.5)], axis=-1).astype(np.int32)


@dataclasses.dataclass
class TransformPlan:
    """Per-image transform parameters for N images."""

    flip: np.ndarray        # bool [N]
    resize_hw: np.ndarray   # int32 [N, 2] first keep-ratio resize
    crop: np.ndarray        # int32 [N, 4] (y0, x0, h, w) in the resized frame
    out_hw: np.ndarray      # int32 [N, 2] final (unpadded) size

    def take(self, indices: np.ndarray) -> "TransformPlan":
        """The plan of the images `indices` (int [M]) in that order."""
        return TransformPlan(self.flip[indices], self.resize_hw[indices], self.crop[indices], self.out_hw[indices])

    def scale(self, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Resized / original linear factors float32 [N, 2] (h, w) for original sizes [N]."""
        sy = self.resize_hw[:, 0] / heights * self.out_hw[:, 0] / self.crop[:, 2]
        sx = self.resize_hw[:, 1] / widths * self.out_hw[:, 1] / self.crop[:, 3]
        return np.stack([sy, sx], axis=1).astype(np.float32)


def _uniform_int(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Integers uniform in [lo, hi] from uniforms u in [0, 1) (vectorised `randint(lo, hi + 1)`)."""
    return (lo + np.minimum(np.floor(u * (hi - lo + 1)), hi - lo)).astype(np.int32)


def _choice(u: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """Elements of `values` picked uniformly with uniforms u in [0, 1)."""
    return np.asarray(values, np.int32)[np.minimum((u * len(values)).astype(np.int64), len(values) - 1)]


def plan_train(heights: np.ndarray, widths: np.ndarray, scales: Scales, rng: np.random.Generator) -> TransformPlan:
    """Random training transforms for images of sizes heights/widths [N] (one fixed set of draws per image)."""
    n = len(heights)
    u = rng.random((n, 8))
    flip = u[:, 0] < scales.flip_prob
    short = _choice(u[:, 1], scales.train_short)
    resize_hw = rescale_size(heights, widths, short, scales.max_size)
    crop = np.concatenate([np.zeros((n, 2), np.int32), resize_hw], axis=1)
    out_hw = resize_hw.copy()
    if scales.two_policy:
        cropped = u[:, 2] < 0.5
        pre_hw = rescale_size(heights, widths, _choice(u[:, 3], scales.crop_short), scales.max_size)
        lo, hi = scales.crop_size
        crop_h = _uniform_int(u[:, 4], np.minimum(pre_hw[:, 0], lo), np.minimum(pre_hw[:, 0], hi))
        crop_w = _uniform_int(u[:, 5], np.minimum(pre_hw[:, 1], lo), np.minimum(pre_hw[:, 1], hi))
        y0 = _uniform_int(u[:, 6], 0, np.maximum(pre_hw[:, 0] - crop_h, 0))
        x0 = _uniform_int(u[:, 7], 0, np.maximum(pre_hw[:, 1] - crop_w, 0))
        crop_out = rescale_size(crop_h, crop_w, short, scales.max_size)
        resize_hw = np.where(cropped[:, None], pre_hw, resize_hw)
        crop = np.where(cropped[:, None], np.stack([y0, x0, crop_h, crop_w], axis=1), crop)
        out_hw = np.where(cropped[:, None], crop_out, out_hw)
    return TransformPlan(flip, resize_hw.astype(np.int32), crop.astype(np.int32), out_hw.astype(np.int32))


def plan_test(heights: np.ndarray, widths: np.ndarray, scales: Scales) -> TransformPlan:
    """Test transform for sizes [N]: single keep-ratio resize to (max_size, test_short), no flip, no crop."""
    resize_hw = rescale_size(heights, widths, scales.test_short, scales.max_size)
    crop = np.concatenate([np.zeros((len(heights), 2), np.int32), resize_hw], axis=1)
    return TransformPlan(np.zeros(len(heights), bool), resize_hw, crop, resize_hw.copy())


def transform_boxes(boxes: np.ndarray, owner: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                    plan: TransformPlan) -> tuple[np.ndarray, np.ndarray]:
    """Boxes xyxy [K,4] of images `owner` [K] (sizes heights/widths [N], plan of N images) through their transforms:
    flip, resize (clipped), crop (clipped), resize (clipped). Returns (boxes [K,4] float32, keep [K]: non-empty)."""
    owner = np.asarray(owner, np.int64)
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    h, w = heights[owner].astype(np.float64), widths[owner].astype(np.float64)
    flip = plan.flip[owner]
    b[flip, 0], b[flip, 2] = w[flip] - b[flip, 2], w[flip] - b[flip, 0]
    h1, w1 = plan.resize_hw[owner, 0], plan.resize_hw[owner, 1]
    y0, x0, ch, cw = (plan.crop[owner, k] for k in range(4))
    oh, ow = plan.out_hw[owner, 0], plan.out_hw[owner, 1]
    stack = lambda *columns: np.stack(columns, axis=1)   # noqa: E731
    b = np.clip(b * stack(w1 / w, h1 / h, w1 / w, h1 / h), 0, stack(w1, h1, w1, h1))
    b = np.clip(b - stack(x0, y0, x0, y0), 0, stack(cw, ch, cw, ch))
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = np.clip(b * stack(ow / cw, oh / ch, ow / cw, oh / ch), 0, stack(ow, oh, ow, oh))
    return b.astype(np.float32), keep


def transform_image(image: np.ndarray, flip: bool, resize_hw: np.ndarray, crop: np.ndarray, out_hw: np.ndarray,
                    bucket_hw: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [h,w,3] through flip / resize to resize_hw / crop (y0, x0, h, w) / resize to out_hw -> uint8 [oh,ow,3],
    zero-padded at the bottom and right to bucket_hw [H, W] or to the shape of `out`, which receives the result when
    given (the last resize writes straight into it)."""
    import cv2

    (rh, rw), (y0, x0, ch, cw), (oh, ow) = (tuple(int(v) for v in a) for a in (resize_hw, crop, out_hw))
    if out is None:
        bh, bw = (oh, ow) if bucket_hw is None else (int(v) for v in bucket_hw)
        out = np.empty((bh, bw, 3), np.uint8)
    out[oh:] = 0
    out[:oh, ow:] = 0
    target = out[:oh, :ow]
    if flip:
        image = cv2.flip(image, 1)
    if (y0, x0, ch, cw) != (0, 0, rh, rw) or (oh, ow) != (rh, rw):
        if image.shape[:2] != (rh, rw):
            image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        image, (rh, rw) = np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]), (oh, ow)
    if image.shape[:2] == (rh, rw):
        target[...] = image
    else:
        resized = cv2.resize(image, (ow, oh), dst=target, interpolation=cv2.INTER_LINEAR)
        if not np.may_share_memory(resized, out):    # an OpenCV that allocated instead of writing into `target`
            target[...] = resized
    return out
