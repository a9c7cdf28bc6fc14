"""FPN priors: the point grid of the one-to-one and FCOS branches and the RetinaNet anchors, in the reference's order.

Everything here depends only on the static padded image size, so it is plain numpy evaluated at trace time.
Order (docs/spec.md §3.2, §3.4): levels P3..P7 concatenated; inside a level row-major (index i * W_l + j); anchors are
location-major then anchor (index (i * W_l + j) * A + a) with base anchors ratio-major, scale-minor.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

STRIDES = (8, 16, 32, 64, 128)


def level_shapes(image_hw: Sequence[int], strides: Sequence[int] = STRIDES) -> tuple[tuple[int, int], ...]:
    """Feature-map (h, w) of each level for a padded input of `image_hw`: repeated ceil-halving as in ResNet/FPN."""
    h, w = int(image_hw[0]), int(image_hw[1])
    shapes = []
    current = 1
    for stride in strides:
        while current < stride:
            h, w = -(-h // 2), -(-w // 2)
            current *= 2
        shapes.append((h, w))
    return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class PointGrid:
    """Point priors of every level: `points` [N, 2] (x, y) pixels, `strides` [N], `levels` [N], per-level sizes."""

    points: np.ndarray
    strides: np.ndarray
    levels: np.ndarray
    shapes: tuple[tuple[int, int], ...]

    @property
    def num_points(self) -> int:
        """N, the number of points over all levels."""
        return int(self.points.shape[0])


def point_grid(image_hw: Sequence[int], strides: Sequence[int] = STRIDES, offset: float = 0.5) -> PointGrid:
    """Points ((j + offset) * s, (i + offset) * s) for every level, level-major and row-major."""
    shapes = level_shapes(image_hw, strides)
    points, point_strides, levels = [], [], []
    for level, ((h, w), stride) in enumerate(zip(shapes, strides)):
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        xy = np.stack([(xs.ravel() + offset) * stride, (ys.ravel() + offset) * stride], axis=-1)
        points.append(xy.astype(np.float32))
        point_strides.append(np.full(h * w, stride, np.float32))
        levels.append(np.full(h * w, level, np.int32))
    return PointGrid(np.concatenate(points), np.concatenate(point_strides), np.concatenate(levels), shapes)


def base_anchors(stride: int, octave_base_scale: float = 4.0, scales_per_octave: int = 3,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> np.ndarray:
    """mmdet AnchorGenerator base anchors centred at 0 -> [A, 4] xyxy, ratio-major, scale-minor (ratio = h / w)."""
    scales = octave_base_scale * 2.0 ** (np.arange(scales_per_octave) / scales_per_octave)
    h_ratios = np.sqrt(np.asarray(ratios, np.float64))
    w_ratios = 1.0 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).ravel()
    hs = (stride * h_ratios[:, None] * scales[None, :]).ravel()
    return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], axis=-1)


def anchors(image_hw: Sequence[int], strides: Sequence[int] = STRIDES, octave_base_scale: float = 4.0,
            scales_per_octave: int = 3, ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> np.ndarray:
    """RetinaNet anchors of every level -> [N * A, 4] xyxy float32, centre offset 0 (cell (i, j) at (j*s, i*s))."""
    out = []
    for (h, w), stride in zip(level_shapes(image_hw, strides), strides):
        base = base_anchors(stride, octave_base_scale, scales_per_octave, ratios)
        ys, xs = np.meshgrid(np.arange(h) * stride, np.arange(w) * stride, indexing="ij")
        shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=-1).astype(np.float64)
        out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def num_anchors_per_point(scales_per_octave: int = 3, ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> int:
    """A = scales per octave x ratios (9 for the reference RetinaNet)."""
    return scales_per_octave * len(ratios)


def fcos_regress_ranges(num_levels: int = 5) -> np.ndarray:
    """mmdet FCOS scale ranges per level [L, 2]: (-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)."""
    bounds = [-1.0, 64.0, 128.0, 256.0, 512.0, 1e8][: num_levels + 1]
    ranges = [(bounds[i], bounds[i + 1]) for i in range(num_levels)]
    ranges[-1] = (ranges[-1][0], 1e8)
    return np.asarray(ranges, np.float32)
