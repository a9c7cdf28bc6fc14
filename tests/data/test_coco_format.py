"""configs/coco_format.py on a tiny real-image COCO-format folder made here: the class count is read or checked, and
the one documented command trains on it (docs/custom_data.md)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from date_jax import cli
from date_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CATEGORIES = [dict(id=3, name="leaf"), dict(id=7, name="trunk"), dict(id=9, name="bird")]   # ids need not be 1..C


def make_folder(folder, num_train=8, num_val=2):
    """The documented layout: annotations/instances_{train,val}.json, train/, val/; a coloured rectangle per box."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "annotations"))
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(folder, split))
        images, annotations = [], []
        for i in range(count):
            h, w = (56, 72) if i % 2 else (72, 56)
            pixels = np.full((h, w, 3), rng.integers(40, 90, 3), np.uint8)
            for k in range(1 + i % 3):
                x, y = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
                size = int(rng.integers(12, 24))
                category = CATEGORIES[(i + k) % 3]
                pixels[y:y + size, x:x + size] = (200 if k == 0 else 60, 60 * (k + 1), 220 - 40 * k)
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=category["id"],
                                        bbox=[x, y, size, size], area=size * size, iscrowd=0))
            Image.fromarray(pixels).save(os.path.join(folder, split, f"{i:04d}.jpg"))
            images.append(dict(id=i + 1, file_name=f"{i:04d}.jpg", height=h, width=w))
        with open(os.path.join(folder, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(dict(images=images, annotations=annotations, categories=CATEGORIES), f)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco_format") / "trees")
    make_folder(path)
    return path


def test_num_classes_is_read_from_the_annotations_or_checked(folder):
    config = cli.load_config_file(f"configs/coco_format.py:{folder}")
    assert config.data.root == folder and config.model.num_classes == 0
    assert pipeline.resolve_num_classes(config) == 3
    config.model.num_classes = 3
    assert pipeline.resolve_num_classes(config) == 3
    for wrong in (2, 80):
        config.model.num_classes = wrong
        with pytest.raises(ValueError) as error:
            pipeline.resolve_num_classes(config)
        message = str(error.value)
        assert "\n" not in message and f"config.model.num_classes={wrong}" in message
        assert "instances_train.json has 3 categories" in message and "--config.model.num_classes=3" in message


def test_the_one_command_trains_on_the_folder(folder, tmp_path):
    workdir = str(tmp_path / "run")
    tiny = ["--config.init_from.backbone=", "--config.dtype=float32", "--config.model.backbone.depth=18",
            "--config.model.backbone.style=pytorch", "--config.model.backbone.base_width=8",
            "--config.model.backbone.stage_blocks=(1,1,1,1)", "--config.model.backbone.frozen_stages=-1",
            "--config.model.neck.out_channels=16", "--config.model.head.feat_channels=16",
            "--config.model.head.stacked_convs=1", "--config.model.head.num_groups=4",
            "--config.data.train_short_sizes=(64,)", "--config.data.test_short_size=64", "--config.data.max_size=96",
            "--config.data.bucket_divisor=32", "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
            "--config.schedule.num_steps=3", "--config.optim.warmup_steps=1", "--config.log_every_steps=1",
            "--config.num_summary_images=0"]
    result = subprocess.run([sys.executable, "train.py", "--config", f"configs/coco_format.py:{folder}",
                             "--workdir", workdir, *tiny], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["num_classes"] == 3           # read from instances_train.json
    with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 3 and np.isfinite(losses).all()
    with open(os.path.join(workdir, "eval_metrics.jsonl")) as f:
        assert "AP" in json.loads(f.readlines()[-1])
    assert sorted(os.listdir(folder)) == ["annotations", "train", "val"]      # nothing written into the data folder
