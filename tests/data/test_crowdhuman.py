"""CrowdHuman odgt -> COCO json (docs/spec.md §7.1) on a small odgt written by the test, through the tool and the loader."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from date_jax.data import coco, crowdhuman
from date_jax.data.issues import DataIssues

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECORDS = [
    {"ID": "273271,c9db000d5146c15", "gtboxes": [
        {"tag": "person", "hbox": [10, 10, 5, 5], "head_attr": {}, "fbox": [-5, 8, 30, 60], "vbox": [0, 8, 25, 50],
         "extra": {"box_id": 0, "occ": 0}},
        {"tag": "mask", "hbox": [1, 1, 1, 1], "fbox": [40, 5, 20, 20], "vbox": [40, 5, 20, 20],
         "extra": {"ignore": 1}},
        {"tag": "person", "fbox": [30, 30, 50, 90], "vbox": [30, 30, 40, 40], "extra": {"ignore": 0}}]},
    {"ID": "284193,faa9000f2678b5e", "gtboxes": [
        {"tag": "person", "fbox": [1, 2, 3, 4], "vbox": [1, 2, 3, 4], "extra": {}}]},
]
SIZES = [(80, 64), (50, 40)]   # (width, height) of the JPEGs


@pytest.fixture()
def crowdhuman_root(tmp_path):
    (tmp_path / "Images").mkdir()
    for record, size in zip(RECORDS, SIZES):
        Image.new("RGB", size, (90, 120, 150)).save(tmp_path / "Images" / f"{record['ID']}.jpg")
    for split in ("train", "val"):
        with open(tmp_path / f"annotation_{split}.odgt", "w") as f:
            f.write("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    return tmp_path


def test_odgt_to_coco_fields(crowdhuman_root):
    result = crowdhuman.odgt_to_coco(str(crowdhuman_root / "annotation_train.odgt"), str(crowdhuman_root / "Images"))
    assert result["categories"] == [{"id": 1, "name": "person"}]
    assert result["images"] == [
        {"id": 1, "file_name": "273271,c9db000d5146c15.jpg", "height": 64, "width": 80},
        {"id": 2, "file_name": "284193,faa9000f2678b5e.jpg", "height": 40, "width": 50}]
    expected = [  # (image, fbox unclipped, vbox, area w*h, iscrowd from extra.ignore; the tag is not looked at)
        (1, [-5, 8, 30, 60], [0, 8, 25, 50], 1800, 0),
        (1, [40, 5, 20, 20], [40, 5, 20, 20], 400, 1),
        (1, [30, 30, 50, 90], [30, 30, 40, 40], 4500, 0),
        (2, [1, 2, 3, 4], [1, 2, 3, 4], 12, 0)]
    got = [(a["image_id"], a["bbox"], a["bbox_vis"], a["area"], a["iscrowd"]) for a in result["annotations"]]
    assert got == expected
    assert [a["id"] for a in result["annotations"]] == [1, 2, 3, 4]
    assert all(a["category_id"] == 1 for a in result["annotations"])


def test_tool_writes_both_splits_and_loader_applies_rules(crowdhuman_root):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "crowdhuman_to_coco.py"), "--root",
                    str(crowdhuman_root)], check=True, capture_output=True)
    for split in ("train", "val"):
        assert (crowdhuman_root / "annotations" / f"{split}.json").is_file()
    issues = DataIssues("crowdhuman")
    records = coco.load_coco_annotations(str(crowdhuman_root / "annotations" / "train.json"),
                                         str(crowdhuman_root / "Images"), issues)
    # crowd ('mask', ignore=1) removed; fbox clipped to the image for training targets
    assert records.boxes[0].tolist() == [[0, 8, 25, 64], [30, 30, 80, 64]]
    assert records.boxes[1].tolist() == [[1, 2, 4, 6]]
    assert issues.counts["box_clipped"] == 2


def test_missing_odgt_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation_train.odgt"):
        crowdhuman.convert_crowdhuman(str(tmp_path), ("train",))
