"""CrowdHuman AP50 / mMR / Recall on hand-built cases whose numbers are worked out by hand below (docs/spec.md §7.2)."""
import math

import numpy as np
import pytest

from date_jax.evaluation import crowdhuman_metrics as ch


def ann(image_id, bbox, crowd=0):
    return dict(image_id=image_id, bbox=bbox, iscrowd=crowd, category_id=1)


def det(image_id, bbox, score):
    return dict(image_id=image_id, bbox=bbox, score=score, category_id=1)


GROUND_TRUTH = dict(
    images=[dict(id=1, width=100, height=100), dict(id=2, width=50, height=50), dict(id=3, width=60, height=60),
            dict(id=4, width=40, height=40)],
    annotations=[ann(1, [0, 0, 10, 20]),             # A
                 ann(1, [70, 0, 30, 40], crowd=1),   # ignore region I (listed before B: must be sorted last)
                 ann(1, [50, 50, 20, 20]),           # B
                 ann(2, [10, 10, 20, 20]),           # C: image 2 gets no detection
                 ann(4, [0, 0, 20, 20])],            # D.  Image 3 has no annotation at all.
    categories=[dict(id=1, name="person")])

DETECTIONS = [
    det(1, [0, 0, 10, 20], 0.9),       # d1: A exactly                                   -> TP
    det(1, [1, 0, 10, 20], 0.8),       # d2: duplicate of A (IoU 0.82, A taken)          -> FP
    det(1, [75, 5, 10, 10], 0.7),      # d3: inside I (IoA 1)                            -> dropped
    det(1, [80, 10, 10, 10], 0.65),    # d3b: the same ignore region absorbs another one -> dropped
    det(1, [52, 50, 20, 20], 0.6),     # d4: B shifted, IoU 360/440                      -> TP
    det(1, [0, 60, 10, 10], 0.5),      # d5: nothing there                               -> FP
    det(1, [95, 95, 20, 20], 0.3),     # d6: leaves the image (clipped), nothing there   -> FP
    det(3, [0, 0, 10, 10], 0.95),      # d7: image without annotations: not evaluated
    det(4, [0, 0, 20, 20], 0.4),       # d8: D                                           -> TP
    det(4, [25, 25, 10, 10], 0.85),    # d9: background                                  -> FP
]


def test_hand_built_case():
    # Pooled by score: d1 TP, d9 FP, d2 FP, d4 TP, d5 FP, d8 TP, d6 FP; 4 non-ignored gts (A, B, C, D) on the
    # 3 annotated images. Recall after each: 1/4 1/4 1/4 2/4 2/4 3/4 3/4; precision: 1 1/2 1/3 2/4 2/5 3/6 3/7.
    expected_ap = (0.25 * (1 / 3 + 2 / 4) / 2) + (0.25 * (2 / 5 + 3 / 6) / 2)
    # FPPI after each: 0 1/3 2/3 2/3 1 1 4/3 -> references 0.01..0.3162 first reached at index 1 (MR 3/4),
    # 0.5623 at index 2 (MR 3/4), 1.0 at index 4 (MR 2/4).
    expected_mmr = math.exp((8 * math.log(0.75) + math.log(0.5)) / 9)
    got = ch.evaluate_crowdhuman(GROUND_TRUTH, DETECTIONS)
    assert got["AP50"] == pytest.approx(expected_ap, abs=1e-12)
    assert got["mMR"] == pytest.approx(expected_mmr, abs=1e-12)
    assert got["Recall"] == pytest.approx(0.75, abs=1e-12)


def test_perfect_detections_have_no_anchor_at_recall_zero():
    dets = [det(1, [0, 0, 10, 20], 0.9), det(1, [50, 50, 20, 20], 0.8), det(2, [10, 10, 20, 20], 0.7),
            det(4, [0, 0, 20, 20], 0.6)]
    got = ch.evaluate_crowdhuman(GROUND_TRUTH, dets)
    # precision 1 throughout, recall 1/4 -> 1: the trapezoids cover only 3/4; no FP so every FPPI reference falls
    # back to the last point, miss rate 0 -> mMR 0.
    assert got == {"AP50": pytest.approx(0.75), "mMR": 0.0, "Recall": pytest.approx(1.0)}


def test_no_detections():
    assert ch.evaluate_crowdhuman(GROUND_TRUTH, []) == {"AP50": 0.0, "mMR": 1.0, "Recall": 0.0}
    # detections only on an unannotated image count as none
    assert ch.evaluate_crowdhuman(GROUND_TRUTH, [det(3, [0, 0, 5, 5], 0.9)])["Recall"] == 0.0


def test_best_iou_wins_and_ties_keep_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 10.]])
    ignore = np.array([False, False, False])
    dets = np.array([[0, 0, 10, 11.5], [0, 0, 10, 10]])
    # the first (higher score) detection overlaps gt1 best (115/120) and takes it; the second then takes gt0
    scores, tp = ch.match_image(dets, np.array([0.9, 0.8]), boxes, ignore)
    assert tp.tolist() == [True, True] and scores.tolist() == [0.9, 0.8]
    iou, ioa = ch.overlaps(np.array([[0, 0, 10, 10.]]), np.array([[5, 0, 15, 10.], [0, 0, 20, 20.]]))
    np.testing.assert_allclose(iou, [[50 / 150, 100 / 400]], rtol=1e-6)
    np.testing.assert_allclose(ioa, [[0.5, 1.0]], rtol=1e-6)


def test_clip_boxes_reference_borders():
    got = ch.clip_boxes(np.array([[-5, -5, 120, 130], [150, 150, 160, 160.]]), height=100, width=80)
    np.testing.assert_allclose(got, [[0, 0, 80, 100], [79, 99, 80, 100]])


def test_requires_non_ignored_ground_truth():
    gt = dict(images=[dict(id=1, width=10, height=10)], annotations=[ann(1, [0, 0, 5, 5], crowd=1)], categories=[])
    with pytest.raises(ValueError, match="non-ignored"):
        ch.evaluate_crowdhuman(gt, [])
