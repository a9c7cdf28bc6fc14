"""A deterministic COCO-format data set of coloured shapes on textured backgrounds, for the demo and for tests.

Layout under `root`: annotations/instances_{train,val}.json, train/*.jpg|png, val/*.jpg|png, synthetic.json (the
parameters it was made with, written first: it marks the folder as this generator's). It is written by an explicit
step, `prepare` (the drivers, `tools/make_synthetic_dataset.py`), never by loading, and only into a new or empty
folder or one that already holds a synthetic set. Boxes are the tight bounds of each shape's drawn pixels (a smaller
shape drawn later may cover part of a larger one). Two styles (sizes are for 160 px images and scale with `image_size`):

- `shapes` (the demo's): four classes (circle, square, triangle, cross) in clear colours with some variation, 12-80 px
  objects, 1-8 per image with mild overlaps (IoU <= 0.3, drawn large to small), every tenth image a crowded scene of
  10-16 smaller objects.
- `crowded` (the convergence study's, closer to the case one-to-one assignment is hard in): eight classes (the four
  plus ring, diamond, bar, frame), 6-30 objects per image of 8-48 px, overlaps up to IoU 0.5, and 4-12 unlabelled
  clutter strokes and blobs in the same palette.
"""
from __future__ import annotations

import json
import logging
import os

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger("date_jax.data")

CATEGORIES = ("circle", "square", "triangle", "cross")
CROWDED_CATEGORIES = CATEGORIES + ("ring", "diamond", "bar", "frame")
STYLES = {"shapes": CATEGORIES, "crowded": CROWDED_CATEGORIES}
DEFAULTS = dict(num_train=2000, num_val=200, image_size=160, seed=0, style="shapes")
_PALETTE = np.array([(230, 40, 40), (40, 170, 60), (40, 90, 230), (240, 200, 30), (200, 60, 210), (30, 200, 210),
                     (250, 130, 20), (245, 245, 245)], np.float64)


def split_paths(root: str, split: str) -> tuple[str, str]:
    """(annotation json, image folder) of `split` ('train' | 'val') under `root`."""
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted colour gradient plus low-frequency noise: float [h, w, 3]."""
    base = rng.uniform(60, 170, 3)
    tilt = rng.uniform(-40, 40, (2, 3))
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    image = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    coarse = rng.normal(0, 12, (h // 16 + 2, w // 16 + 2, 3))
    noise = np.asarray(Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize((w, h), Image.BILINEAR),
                       np.float64) - 128
    return image + noise + rng.normal(0, 4, (h, w, 3))


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean [size, size] mask of one shape of class `kind` with a random aspect/rotation jitter."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    s = size - 1
    if kind == 0:
        draw.ellipse([0, 0, s, s], fill=255)
    elif kind == 1:
        inset = int(rng.uniform(0, 0.12) * size)
        draw.rectangle([inset, 0, s - inset, s], fill=255)
    elif kind == 2:
        apex = rng.uniform(0.3, 0.7) * s
        draw.polygon([(apex, 0), (0, s), (s, s)], fill=255)
    elif kind == 3:
        t = max(2, int(size * rng.uniform(0.22, 0.32)))
        mid = size // 2
        draw.rectangle([mid - t // 2, 0, mid - t // 2 + t, s], fill=255)
        draw.rectangle([0, mid - t // 2, s, mid - t // 2 + t], fill=255)
    elif kind == 4:
        draw.ellipse([0, 0, s, s], outline=255, width=max(2, size // 6))
    elif kind == 5:
        draw.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif kind == 6:
        t = max(2, int(size * rng.uniform(0.25, 0.4)))
        draw.rectangle([0, (size - t) // 2, s, (size - t) // 2 + t], fill=255)
    else:
        draw.rectangle([0, 0, s, s], outline=255, width=max(2, size // 6))
    angle = rng.choice([0, 90, 180, 270]) if kind in (2, 6) else 0
    return np.asarray(canvas.rotate(angle), np.uint8) > 127


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])   # noqa: E731
    return inter / (area(box) + area(others) - inter)


def _clutter(rng: np.random.Generator, image: np.ndarray, unit: float) -> None:
    """Draw 4-12 unlabelled strokes and blobs in the object palette onto float `image` [h, w, 3], in place."""
    h, w = image.shape[:2]
    layers = []
    for _ in range(int(rng.integers(4, 13))):
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            length, angle = rng.uniform(10, 60) * unit, rng.uniform(0, np.pi)
            draw.line([(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))], fill=255,
                      width=int(rng.integers(1, 4)))
        else:
            points = [(x + r * np.cos(a), y + r * np.sin(a))
                      for a, r in zip(np.sort(rng.uniform(0, 2 * np.pi, 6)), rng.uniform(3, 12, 6) * unit)]
            draw.polygon(points, fill=255)
        layers.append(np.asarray(layer) > 127)
    for mask in layers:
        image[mask] = np.clip(_PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 15, 3), 0, 255)


def render_image(rng: np.random.Generator, image_size: int,
                 style: str = "shapes") -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One scene of `style` (module docstring): (uint8 [h, w, 3], [(xywh box, category index), ...])."""
    h, w = (int(image_size * rng.uniform(0.8, 1.2)) for _ in range(2))
    image = _background(rng, h, w)
    unit = image_size / 160
    if style == "crowded":
        _clutter(rng, image, unit)
        count, (lo, hi), max_iou = int(rng.integers(6, 31)), (8 * unit, 48 * unit), 0.5
    else:
        crowded = rng.random() < 0.1
        count = int(rng.integers(10, 17)) if crowded else int(rng.integers(1, 9))
        (lo, hi), max_iou = ((12 * unit, 40 * unit) if crowded else (12 * unit, 80 * unit)), 0.3
    categories = STYLES[style]
    sizes = sorted((int(np.exp(rng.uniform(np.log(lo), np.log(hi)))) for _ in range(count)), reverse=True)
    placed: list[np.ndarray] = []
    objects = []
    for size in sizes:     # large first, so that a smaller shape is never hidden under a later, larger one
        size = max(6, min(size, h - 2, w - 2))
        for _ in range(10):
            y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
            box = np.array([x, y, x + size, y + size], np.float64)
            if not placed or _iou(box, np.array(placed)).max() <= max_iou:
                break
        else:
            continue
        kind = int(rng.integers(len(categories)))
        mask = _shape_mask(kind, size, rng)
        colour = np.clip(_PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 15, 3), 0, 255)
        image[y:y + size, x:x + size][mask] = colour * rng.uniform(0.85, 1.0)
        ys, xs = np.nonzero(mask)
        tight = [x + xs.min(), y + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        placed.append(box)
        objects.append(([float(v) for v in tight], kind))
    return np.uint8(np.clip(image, 0, 255)), objects


def _write_split(root: str, split: str, num_images: int, image_size: int, seed: int, first_id: int,
                 style: str) -> None:
    ann_file, image_dir = split_paths(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        pixels, objects = render_image(rng, image_size, style)
        name = f"{image_id:06d}." + ("png" if i % 10 == 9 else "jpg")
        Image.fromarray(pixels).save(os.path.join(image_dir, name), quality=92)
        images.append(dict(id=image_id, file_name=name, height=pixels.shape[0], width=pixels.shape[1]))
        for box, kind in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=kind + 1, bbox=box,
                                    area=box[2] * box[3], iscrowd=0))
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(STYLES[style])]
    tmp = ann_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    os.replace(tmp, ann_file)     # the json appears last: its presence means the split is complete


MARKER = "synthetic.json"


def is_complete(root: str) -> bool:
    """Whether `root` holds a finished synthetic set (its marker and both annotation files)."""
    return os.path.isfile(os.path.join(root, MARKER)) and all(
        os.path.isfile(split_paths(root, s)[0]) for s in ("train", "val"))


def check_prepared(root: str) -> None:
    """Raise FileNotFoundError naming the command that writes the set, unless `root` holds a finished one."""
    if not is_complete(root):
        raise FileNotFoundError(f"no synthetic data set in {root!r}; train.py writes it on start, or run "
                                f"`python tools/make_synthetic_dataset.py --root {root}`")


def ensure_synthetic_dataset(root: str, num_train: int, num_val: int, image_size: int, seed: int,
                             style: str = "shapes") -> None:
    """Write the synthetic set under `root` unless it is there already; a folder holding anything else is refused
    (ValueError), so generated images never mix with a user's data."""
    if style not in STYLES:
        raise ValueError(f"data.synthetic.style={style!r}; choose one of {sorted(STYLES)}")
    params = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, style=style)
    marker = os.path.join(root, MARKER)
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(marker):
        raise ValueError(f"data.root={root!r} is not empty and holds no synthetic set; synthetic data is only "
                         f"written to a new or empty folder (for your own COCO-format data use --config "
                         f"configs/coco_format.py:{root})")
    if is_complete(root):
        with open(marker) as f:
            existing = json.load(f)
        if {"style": "shapes", **existing} != params:     # sets written before styles existed are 'shapes'
            logger.warning("Synthetic data set at %s was made with %s, not %s; using it as it is (delete the "
                           "folder to regenerate).", root, existing, params)
        return
    logger.info("Writing the synthetic data set to %s (%s).", root, params)
    os.makedirs(root, exist_ok=True)
    with open(marker, "w") as f:     # first: an interrupted write is still recognised as this generator's
        json.dump(params, f)
    _write_split(root, "train", num_train, image_size, seed, first_id=1, style=style)
    _write_split(root, "val", num_val, image_size, seed, first_id=1_000_001, style=style)


def prepare(data: ml_collections.ConfigDict) -> None:
    """The explicit step before loading: for config.data.source='synthetic', write the set to `config.data.root`
    with `config.data.synthetic` (0 -> defaults) unless it is there; other sources: nothing."""
    if data.source != "synthetic":
        return
    s = data.synthetic
    values = {k: int(s.get(k, 0)) or DEFAULTS[k] for k in ("num_train", "num_val", "image_size")}
    ensure_synthetic_dataset(data.root, seed=int(s.get("seed", DEFAULTS["seed"])),
                             style=str(s.get("style", "") or DEFAULTS["style"]), **values)
