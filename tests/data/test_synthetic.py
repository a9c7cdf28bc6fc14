"""The synthetic shapes set: deterministic, COCO-format, real image files, written once, with tight boxes."""
import json
import os

import numpy as np
from PIL import Image

from date_jax.data import synthetic


def load(root, split):
    with open(synthetic.split_paths(root, split)[0]) as f:
        return json.load(f)


def test_deterministic_and_written_once(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for root in (a, b):
        synthetic.ensure_synthetic_dataset(root, num_train=30, num_val=5, image_size=96, seed=1)
    assert load(a, "train") == load(b, "train") and load(a, "val") == load(b, "val")
    for im in load(a, "train")["images"][:10]:
        with open(os.path.join(a, "train", im["file_name"]), "rb") as fa, \
                open(os.path.join(b, "train", im["file_name"]), "rb") as fb:
            assert fa.read() == fb.read()
    ann_file = synthetic.split_paths(a, "train")[0]
    stamp = os.stat(ann_file).st_mtime_ns
    synthetic.ensure_synthetic_dataset(a, num_train=30, num_val=5, image_size=96, seed=1)
    assert os.stat(ann_file).st_mtime_ns == stamp
    synthetic.ensure_synthetic_dataset(str(tmp_path / "c"), num_train=30, num_val=5, image_size=96, seed=2)
    assert load(str(tmp_path / "c"), "train") != load(a, "train")


def test_contents_are_a_learnable_detection_set(tmp_path):
    root = str(tmp_path)
    synthetic.ensure_synthetic_dataset(root, num_train=60, num_val=5, image_size=160, seed=0)
    data = load(root, "train")
    assert [c["name"] for c in data["categories"]] == list(synthetic.CATEGORIES)
    per_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a)
    counts = np.array([len(v) for v in per_image.values()])
    assert counts.min() >= 1 and counts.max() <= 16 and (counts >= 10).any()       # some crowded scenes
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in data["annotations"]])
    assert sides.min() >= 6 and sides.max() <= 80 and np.percentile(sides, 90) > 40
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4}
    kinds = {os.path.splitext(im["file_name"])[1] for im in data["images"]}
    assert kinds == {".jpg", ".png"}
    checked = 0
    for im in data["images"]:
        pixels = np.asarray(Image.open(os.path.join(root, "train", im["file_name"])).convert("RGB"), np.int64)
        assert pixels.shape == (im["height"], im["width"], 3) and 128 <= min(pixels.shape[:2]) <= 192
        boxes = np.array([a["bbox"] for a in per_image[im["id"]]], np.int64)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= im["width"]).all()
        assert (boxes[:, 1] + boxes[:, 3] <= im["height"]).all()
        if not im["file_name"].endswith(".png"):
            continue
        for k, (x, y, w, h) in enumerate(boxes):
            others = np.delete(boxes, k, axis=0)
            apart = ((others[:, 0] > x + w) | (others[:, 0] + others[:, 2] < x) | (others[:, 1] > y + h)
                     | (others[:, 1] + others[:, 3] < y))
            if not apart.all() or x == 0 or y == 0 or x + w == im["width"] or y + h == im["height"]:
                continue
            # an isolated shape in a lossless file: its flat colour touches all four box edges and not the ring outside
            region = pixels[y:y + h, x:x + w].reshape(-1, 3)
            values, freq = np.unique(region, axis=0, return_counts=True)
            colour = values[np.argmax(freq)]
            is_shape = (pixels == colour).all(-1)
            assert is_shape[y, x:x + w].any() and is_shape[y + h - 1, x:x + w].any()
            assert is_shape[y:y + h, x].any() and is_shape[y:y + h, x + w - 1].any()
            assert not is_shape[y - 1, x:x + w].any() and not is_shape[y + h, x:x + w].any()
            assert not is_shape[y:y + h, x - 1].any() and not is_shape[y:y + h, x + w].any()
            checked += 1
    assert checked >= 5
