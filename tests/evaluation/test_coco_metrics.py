"""COCO metrics: the results format by hand, and the 12 numbers equal pycocotools called directly on the same files."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from date_jax.evaluation import coco_metrics

CATEGORY_IDS = [1, 5, 9]


def make_dataset(seed=0, num_images=12):
    """A small COCO json (small/medium/large boxes, one crowd box) and noisy detections of it."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(dict(id=image_id, width=320, height=240, file_name=f"{image_id}.jpg"))
        for _ in range(rng.integers(1, 6)):
            w, h = rng.choice([12, 50, 140]) * rng.uniform(0.8, 1.2, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            cat = int(rng.choice(CATEGORY_IDS))
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cat,
                                    bbox=[x, y, w, h], area=w * h, iscrowd=int(rng.uniform() < 0.05)))
            if rng.uniform() < 0.85:                                    # a detection near the object
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                detections.append(dict(image_id=image_id, category_id=cat, score=float(rng.uniform(0.3, 1)),
                                       bbox=list(np.array([x, y, w, h]) + jitter)))
        for _ in range(rng.integers(0, 4)):                             # false positives
            detections.append(dict(image_id=image_id, category_id=int(rng.choice(CATEGORY_IDS)),
                                   score=float(rng.uniform(0, 0.6)),
                                   bbox=[float(rng.uniform(0, 250)), float(rng.uniform(0, 180)), 30.0, 40.0]))
    categories = [dict(id=c, name=f"c{c}") for c in CATEGORY_IDS]
    return dict(images=images, annotations=annotations, categories=categories), detections


def pycocotools_stats(ann_path, det_path, image_ids=None):
    gt = COCO(ann_path)
    ev = COCOeval(gt, gt.loadRes(det_path), "bbox")
    if image_ids is not None:
        ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    gt, dets = make_dataset()
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "dets.json").write_text(json.dumps(dets))
    return str(root / "gt.json"), str(root / "dets.json"), dets


def test_equals_pycocotools_on_the_same_files(files):
    ann_path, det_path, dets = files
    expected = pycocotools_stats(ann_path, det_path)
    got = coco_metrics.evaluate_coco(ann_path, dets, backend="pycocotools")
    assert list(got) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    np.testing.assert_allclose(list(got.values()), expected, atol=0)
    assert 0.2 < got["AP"] < 1.0                                       # a non-trivial case


def test_image_subset_equals_pycocotools(files):
    ann_path, det_path, dets = files
    subset = [2, 3, 5, 7]
    expected = pycocotools_stats(ann_path, det_path, image_ids=subset)
    got = coco_metrics.evaluate_coco(ann_path, [d for d in dets if d["image_id"] in subset], image_ids=subset,
                                     backend="pycocotools")
    np.testing.assert_allclose(list(got.values()), expected, atol=0)


def test_faster_coco_eval_gives_identical_numbers(files):
    pytest.importorskip("faster_coco_eval", reason="optional backend: pip install faster-coco-eval")
    ann_path, det_path, dets = files
    expected = pycocotools_stats(ann_path, det_path)
    got = coco_metrics.evaluate_coco(ann_path, dets, backend="faster_coco_eval")
    np.testing.assert_allclose(list(got.values()), expected, atol=1e-12)


def test_no_detections_and_unknown_backend(files):
    assert coco_metrics.evaluate_coco(files[0], [], backend="pycocotools") == dict.fromkeys(
        coco_metrics.METRIC_NAMES, 0.0)
    with pytest.raises(ValueError, match="not one of"):
        coco_metrics.resolve_backend("detectron")


def test_results_format_by_hand():
    boxes = np.array([[[10.0, 20.0, 40.0, 60.0], [0, 0, 1, 1]], [[5.0, 5.0, 6.5, 9.0], [1, 1, 2, 2]]])
    scores = np.array([[0.9, 0.1], [0.8, 0.7]])
    labels = np.array([[2, 0], [0, 1]])
    valid = np.array([[True, False], [True, True]])
    got = coco_metrics.coco_results([42, 7], boxes, scores, labels, valid, CATEGORY_IDS)
    assert got == [dict(image_id=42, category_id=9, bbox=[10.0, 20.0, 30.0, 40.0], score=pytest.approx(0.9)),
                   dict(image_id=7, category_id=1, bbox=[5.0, 5.0, 1.5, 4.0], score=pytest.approx(0.8)),
                   dict(image_id=7, category_id=5, bbox=[1.0, 1.0, 1.0, 1.0], score=pytest.approx(0.7))]


def test_ground_truth_dict_is_not_modified_and_gives_the_same_numbers(files):
    ann_path, det_path, dets = files
    with open(ann_path) as f:
        gt = json.load(f)
    before = json.dumps(gt, sort_keys=True), json.dumps(dets, sort_keys=True)
    got = coco_metrics.evaluate_coco(gt, dets, backend="pycocotools")
    np.testing.assert_allclose(list(got.values()), pycocotools_stats(ann_path, det_path), atol=0)
    assert (json.dumps(gt, sort_keys=True), json.dumps(dets, sort_keys=True)) == before
