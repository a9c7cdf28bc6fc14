"""Decoding (docs/spec.md §6) against a plain numpy re-statement of mmdet's per-level filter / top-k / clip / top-k."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from date_jax import config as config_lib
from date_jax import decode
from date_jax.models.head import o2o_scores

IMAGE_HW = (128, 256)           # padded input: levels 16x32, 8x16, 4x8, 2x4, 1x2 -> 682 points
STRIDES = (8, 16, 32, 64, 128)


def reference_points() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Point centres and (start, stop) of each level, written out with plain loops."""
    points, bounds, start = [], [], 0
    for s in STRIDES:
        h, w = IMAGE_HW[0] // s, IMAGE_HW[1] // s
        for i in range(h):
            for j in range(w):
                points.append(((j + 0.5) * s, (i + 0.5) * s))
        bounds.append((start, start + h * w))
        start += h * w
    return np.asarray(points, np.float64), bounds


def reference_candidates(scores, ltrb, image_shape, thr, nms_pre):
    """[(score, box, label, point)] kept per level (score > thr, best nms_pre), boxes decoded and clipped."""
    points, bounds = reference_points()
    h, w = image_shape
    out = []
    for start, stop in bounds:
        pairs = [(scores[n, c], n, c) for n in range(start, stop) for c in range(scores.shape[1])
                 if scores[n, c] > thr]
        pairs.sort(key=lambda p: -p[0])
        for score, n, c in pairs[:nms_pre]:
            x, y = points[n]
            l, t, r, b = ltrb[n]
            box = [min(max(x - l, 0), w), min(max(y - t, 0), h), min(max(x + r, 0), w), min(max(y + b, 0), h)]
            out.append((score, np.asarray(box), c, n))
    return out


def reference_o2o(scores, ltrb, image_shape, thr, nms_pre, max_per_img):
    cands = reference_candidates(scores, ltrb, image_shape, thr, nms_pre)
    cands.sort(key=lambda p: -p[0])
    return cands[:max_per_img]


def reference_nms(cands, iou_thr):
    """Greedy per-class NMS over candidates sorted by score."""
    kept = []
    for score, box, label, n in sorted(cands, key=lambda p: -p[0]):
        suppressed = False
        for _, kbox, klabel, _ in kept:
            if klabel != label:
                continue
            iw = max(0.0, min(box[2], kbox[2]) - max(box[0], kbox[0]))
            ih = max(0.0, min(box[3], kbox[3]) - max(box[1], kbox[1]))
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (kbox[2] - kbox[0]) * (kbox[3] - kbox[1]) - inter
            if union > 0 and inter / union > iou_thr:
                suppressed = True
                break
        if not suppressed:
            kept.append((score, box, label, n))
    return kept


def random_outputs(seed, batch=2, num_classes=3):
    rng = np.random.default_rng(seed)
    n = reference_points()[0].shape[0]
    logits = rng.normal(-1.0, 1.5, (batch, n, num_classes)).astype(np.float32)
    ltrb = rng.uniform(0, 90, (batch, n, 4)).astype(np.float32)
    centerness = rng.normal(0, 1, (batch, n, 1)).astype(np.float32)
    return logits, ltrb, centerness


def check_equal(got, ref, b):
    valid = np.asarray(got["valid"][b])
    assert valid.sum() == len(ref)
    assert np.all(valid[: len(ref)]) and not np.any(valid[len(ref):])
    k = len(ref)
    np.testing.assert_allclose(np.asarray(got["scores"][b][:k]), [r[0] for r in ref], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got["boxes"][b][:k]), np.stack([r[1] for r in ref]), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got["labels"][b][:k]), [r[2] for r in ref])


@pytest.mark.parametrize("thr,nms_pre,max_per_img", [(0.3, 7, 20), (0.01, 100, 100), (0.95, 1000, 50)])
def test_o2o_matches_reference(thr, nms_pre, max_per_img):
    logits, ltrb, _ = random_outputs(0)
    image_shape = np.array([[100, 200], [128, 256]], np.int32)      # first image is padded: boxes clip to 100x200
    got = jax.jit(lambda lg, lt, s: decode.decode_o2o(lg, lt, s, image_hw=IMAGE_HW, score_thr=thr, nms_pre=nms_pre,
                                                     max_per_img=max_per_img))(logits, ltrb, image_shape)
    assert got["boxes"].shape == (2, max_per_img, 4) and got["valid"].shape == (2, max_per_img)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    for b in range(2):
        ref = reference_o2o(probs[b], ltrb[b], image_shape[b], thr, nms_pre, max_per_img)
        check_equal(got, ref, b)
    # the per-level cap really binds in the first case and the threshold leaves fewer than max_per_img in the last
    if nms_pre == 7:
        assert len(reference_candidates(probs[0], ltrb[0], image_shape[0], thr, 10**9)) > 5 * 7
    if thr == 0.95:
        assert 0 < int(got["valid"][0].sum()) < max_per_img
    assert float(np.asarray(got["boxes"][0])[..., 2].max()) <= 200.0


def test_more_slots_than_candidates_are_invalid():
    logits, ltrb, _ = random_outputs(1, batch=1)
    got = decode.decode_o2o(jnp.asarray(logits), jnp.asarray(ltrb), jnp.array([[128, 256]]), image_hw=IMAGE_HW,
                            score_thr=0.0, nms_pre=1, max_per_img=8)
    # five levels with one candidate each: five valid detections, three padded slots
    assert got["valid"].tolist() == [[True] * 5 + [False] * 3]
    assert np.all(np.asarray(got["scores"])[0, 5:] == 0.0)


def test_3dmf_scores_are_clipped_product():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (1, 10, 2)).astype(np.float32)
    f = rng.normal(0, 3, (1, 10, 1)).astype(np.float32)
    f[0, 0, 0] = -30.0                                              # product underflows -> clipped to 1e-5
    z[0, 1, :] = 30.0
    f[0, 1, 0] = 30.0                                               # product -> 1, clipped to 1 - 1e-5
    def sig(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))
    expected = np.clip(sig(z) * sig(f), 1e-5, 1 - 1e-5)
    got = np.asarray(o2o_scores(jnp.asarray(z), jnp.asarray(f)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0, 0, 0] == pytest.approx(1e-5) and got[0, 1, 0] == pytest.approx(1 - 1e-5)


def test_fcos_with_nms_matches_reference():
    logits, ltrb, centerness = random_outputs(3)
    ltrb = ltrb * 0.5 + 10                                         # similar boxes so that NMS has work to do
    image_shape = np.array([[120, 250], [128, 256]], np.int32)
    thr, nms_pre, max_per_img, iou_thr = 0.2, 30, 40, 0.5
    got = jax.jit(lambda lg, lt, c, s: decode.decode_fcos(lg, lt, c, s, image_hw=IMAGE_HW, score_thr=thr,
                                                         nms_pre=nms_pre, max_per_img=max_per_img,
                                                         iou_threshold=iou_thr))(logits, ltrb, centerness, image_shape)
    def sig(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))
    for b in range(2):
        cands = reference_candidates(sig(logits[b]), ltrb[b], image_shape[b], thr, nms_pre)
        cands = [(s * sig(centerness[b, n, 0]), box, c, n) for s, box, c, n in cands]
        kept = reference_nms(cands, iou_thr)
        assert len(kept) < len(cands)                               # NMS removed something
        check_equal(got, kept[:max_per_img], b)


def test_greedy_nms_hand_case():
    boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = jnp.array([0.9, 0.8, 0.7, 0.6, -jnp.inf])
    labels = jnp.array([0, 0, 1, 0, 0])
    # box 1 overlaps box 0 with IoU 90/110 = 0.818 (same class: dropped), box 2 is another class, box 4 is absent
    keep = decode.greedy_nms(boxes, scores, labels, 0.6)
    assert keep.tolist() == [True, False, True, True, False]
    assert decode.greedy_nms(boxes, scores, labels, 0.85).tolist() == [True, True, True, True, False]


def test_rescale_boxes_hand_numbers():
    boxes = np.array([[[10.0, 20.0, 30.0, 40.0]]])
    scale = np.array([[0.5, 2.0]])                                  # resized/original: h halved, w doubled
    np.testing.assert_allclose(decode.rescale_boxes(boxes, scale), [[[5.0, 40.0, 15.0, 80.0]]])


def test_decode_outputs_dispatch():
    cfg = config_lib.base_config()
    cfg.model = config_lib.tiny_model_config(num_classes=3)
    cfg.test.max_per_img = 10
    logits, ltrb, centerness = random_outputs(4, batch=1)
    shape = jnp.array([[128, 256]])
    outputs = dict(o2o_logits=logits, o2o_ltrb=ltrb, o2m_logits=logits, o2m_ltrb=ltrb, o2m_centerness=centerness)
    plain = decode.decode_outputs(outputs, shape, image_hw=IMAGE_HW, config=cfg)
    np.testing.assert_allclose(plain["scores"], decode.decode_o2o(logits, ltrb, shape, image_hw=IMAGE_HW,
                                                                  max_per_img=10)["scores"])
    cfg.model.o2o = "none"
    cfg.test.nms = True
    fcos = decode.decode_outputs(outputs, shape, image_hw=IMAGE_HW, config=cfg)
    np.testing.assert_allclose(fcos["scores"], decode.decode_fcos(logits, ltrb, centerness, shape,
                                                                  image_hw=IMAGE_HW, score_thr=0.01, nms_pre=100,
                                                                  max_per_img=10, iou_threshold=0.6)["scores"])
    cfg.model.o2m = "retina"
    with pytest.raises(ValueError, match="o2m='fcos'"):
        decode.decode_outputs({"o2m_logits": logits}, shape, image_hw=IMAGE_HW, config=cfg)
