"""Boxes drawn on images (uint8 RGB), for TensorBoard summaries, evaluate.py's PNGs and the demo."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

TRUE_COLOR = (0, 200, 0)
PREDICTED_COLOR = (230, 30, 30)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, *, labels: np.ndarray | None = None,
               scores: np.ndarray | None = None, names: Sequence[str] | None = None,
               color: tuple[int, int, int] = PREDICTED_COLOR, width: int = 2) -> np.ndarray:
    """A copy of `image` uint8 [H, W, 3] with xyxy `boxes` [K, 4] outlined, captioned '<name> <score>' when given."""
    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    pen = ImageDraw.Draw(canvas)
    for k, box in enumerate(np.asarray(boxes, np.float32).reshape(-1, 4)):
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=width)
        caption = []
        if labels is not None:
            label = int(labels[k])
            caption.append(names[label] if names is not None and label < len(names) else str(label))
        if scores is not None:
            caption.append(f"{float(scores[k]):.2f}")
        if caption:
            pen.text((x1 + width, max(y1 - 11, 0)), " ".join(caption), fill=color)
    return np.asarray(canvas)


def stack_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Zero-pad images [H_i, W_i, 3] at the bottom/right to a common size -> uint8 [K, H, W, 3] ([0, 1, 1, 3] if
    none)."""
    if not images:
        return np.zeros([0, 1, 1, 3], np.uint8)
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    out = np.zeros([len(images), h, w, 3], np.uint8)
    for i, im in enumerate(images):
        out[i, : im.shape[0], : im.shape[1]] = im
    return out


def save_png(image: np.ndarray, path: str) -> None:
    """Write a uint8 [H, W, 3] image as a PNG, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
