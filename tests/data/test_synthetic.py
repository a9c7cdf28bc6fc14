"""The synthetic shapes set: deterministic, COCO-format, real image files, written once by an explicit step, with
tight boxes, and never into a folder that holds anything else."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from date_jax import config as config_lib
from date_jax.data import pipeline, synthetic


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


def test_refuses_a_folder_that_holds_anything_else(tmp_path):
    user = tmp_path / "my_coco"
    (user / "annotations").mkdir(parents=True)
    (user / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(ValueError, match=r"my_coco.*not empty.*configs/coco_format.py"):
        synthetic.ensure_synthetic_dataset(str(user), num_train=3, num_val=2, image_size=64, seed=0)
    assert sorted(p.name for p in user.rglob("*")) == ["annotations", "instances_train.json"]   # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    synthetic.ensure_synthetic_dataset(str(empty), num_train=3, num_val=2, image_size=64, seed=0)
    assert synthetic.is_complete(str(empty))


def test_written_by_prepare_never_by_loading(tmp_path):
    config = config_lib.base_config()
    config.data.update(source="synthetic", root=str(tmp_path / "shapes"))
    config.data.synthetic.update(num_train=3, num_val=2, image_size=64)
    with pytest.raises(FileNotFoundError, match="make_synthetic_dataset.py --root .*shapes"):
        pipeline.dataset_info(config, "train")
    assert not (tmp_path / "shapes").exists()
    synthetic.prepare(config.data)
    assert pipeline.dataset_info(config, "train").num_images == 3
    coco_config = config_lib.base_config()
    coco_config.data.root = str(tmp_path / "nothing")
    synthetic.prepare(coco_config.data)                  # another source: nothing is written
    assert not (tmp_path / "nothing").exists()


def test_make_synthetic_dataset_tool_refuses_with_one_line(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "tools/make_synthetic_dataset.py", "--root", str(tmp_path)], cwd=root,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "error: data.root=" in result.stderr


def test_crowded_style_is_harder_and_chosen_by_config(tmp_path):
    config = config_lib.base_config()
    config.data.update(source="synthetic", root=str(tmp_path / "crowded"))
    config.data.synthetic.update(num_train=40, num_val=2, image_size=160, style="crowded")
    synthetic.prepare(config.data)
    data = load(config.data.root, "train")
    assert [c["name"] for c in data["categories"]] == list(synthetic.CROWDED_CATEGORIES)
    assert len(synthetic.CROWDED_CATEGORIES) == 8
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 9))
    per_image = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a["bbox"])
    counts = np.array([len(v) for v in per_image.values()])
    assert counts.min() >= 4 and counts.max() <= 30 and counts.mean() > 10      # placements may fail: never more
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in data["annotations"]])
    assert sides.min() >= 6 and sides.max() <= 48 and np.median(sides) < 30
    overlaps = []
    for boxes in per_image.values():            # overlaps beyond the 'shapes' cap of 0.3 occur (square boxes drawn)
        b = np.array(boxes, np.float64)
        b[:, 2:] += b[:, :2]
        for k in range(len(b)):
            overlaps.append(synthetic._iou(b[k], np.delete(b, k, axis=0)).max())
    assert max(overlaps) > 0.3
    with open(os.path.join(config.data.root, synthetic.MARKER)) as f:
        assert json.load(f)["style"] == "crowded"
    with pytest.raises(ValueError, match="style='dense'"):
        synthetic.ensure_synthetic_dataset(str(tmp_path / "x"), 2, 2, 64, 0, style="dense")
