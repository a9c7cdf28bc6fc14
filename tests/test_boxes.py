"""Box algebra of `date_jax.boxes` against plain-python references written from the mmdet 2.25 formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from date_jax import boxes

# A mix of ordinary, touching, nested, disjoint, zero-area (point and line) and inverted boxes.
BOXES_A = np.array([
    [0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 10, 10], [2, 2, 4, 4], [0, 0, 0, 0],
    [3, 3, 3, 8], [10, 10, 5, 5], [-5, -5, 5, 5], [100, 100, 150, 120],
], np.float32)
BOXES_B = np.array([
    [5, 5, 15, 15], [0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 10, 10], [0, 0, 0, 0],
    [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 40], [0.5, 0.25, 1.5, 2.0],
], np.float32)


def ref_area(b):
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def ref_inter(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def ref_iou(a, b, eps=1e-6):
    inter = ref_inter(a, b)
    return inter / max(ref_area(a) + ref_area(b) - inter, eps)


def ref_giou(a, b, eps=1e-7):
    inter = ref_inter(a, b)
    union = max(ref_area(a) + ref_area(b) - inter, eps)
    ew = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
    eh = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
    enclose = max(ew * eh, eps)
    return inter / union - (enclose - union) / enclose


def test_area_including_degenerate():
    got = np.asarray(boxes.area(jnp.asarray(BOXES_A)))
    want = [ref_area(b.tolist()) for b in BOXES_A]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[4] == 0 and got[5] == 0 and got[6] == 0      # point, line, inverted


def test_iou_elementwise_and_pairwise():
    got = np.asarray(boxes.iou(jnp.asarray(BOXES_A), jnp.asarray(BOXES_B)))
    want = [ref_iou(a.tolist(), b.tolist()) for a, b in zip(BOXES_A, BOXES_B)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # hand-computed: two 10x10 squares overlapping 5x5 -> 25 / 175; identical zero-area boxes -> 0, not NaN.
    assert got[0] == pytest.approx(25 / 175)
    assert got[4] == 0.0 and np.all(np.isfinite(got))
    pair = np.asarray(boxes.pairwise_iou(jnp.asarray(BOXES_A), jnp.asarray(BOXES_B)))
    assert pair.shape == (len(BOXES_A), len(BOXES_B))
    want_pair = [[ref_iou(a.tolist(), b.tolist()) for b in BOXES_B] for a in BOXES_A]
    np.testing.assert_allclose(pair, want_pair, rtol=1e-5, atol=1e-7)


def test_giou_elementwise_and_pairwise():
    got = np.asarray(boxes.giou(jnp.asarray(BOXES_A), jnp.asarray(BOXES_B)))
    want = [ref_giou(a.tolist(), b.tolist()) for a, b in zip(BOXES_A, BOXES_B)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # hand-computed: touching squares [0,10]x[0,10] and [10,20]x[0,10]: IoU 0, enclose 200, union 200 -> 0.
    assert got[2] == pytest.approx(0.0, abs=1e-7)
    # disjoint [-5,5]^2 and [20,30]x[20,40]: union 300, enclose 35*45 -> -(1575 - 300) / 1575.
    assert got[7] == pytest.approx(-(1575 - 300) / 1575, rel=1e-6)
    assert np.all(got >= -1) and np.all(got <= 1)
    pair = np.asarray(boxes.pairwise_giou(jnp.asarray(BOXES_A), jnp.asarray(BOXES_B)))
    want_pair = [[ref_giou(a.tolist(), b.tolist()) for b in BOXES_B] for a in BOXES_A]
    np.testing.assert_allclose(pair, want_pair, rtol=1e-5, atol=1e-6)


def test_giou_zero_area_boxes_are_finite():
    a = jnp.zeros((3, 4))
    got = np.asarray(boxes.giou(a, a))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, [ref_giou([0.0] * 4, [0.0] * 4)] * 3, atol=1e-7)


def test_cxcywh_round_trip_and_values():
    got = np.asarray(boxes.xyxy_to_cxcywh(jnp.asarray(BOXES_A)))
    want = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]] for b in BOXES_A.tolist()]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    back = np.asarray(boxes.cxcywh_to_xyxy(jnp.asarray(got)))
    np.testing.assert_allclose(back, BOXES_A, atol=1e-5)


def test_ltrb_round_trip_and_values():
    points = np.array([[5, 5], [10, 2], [0, 0]], np.float32)
    gt = np.array([[0, 0, 10, 10], [4, 1, 12, 9], [-3, -2, 1, 5]], np.float32)
    ltrb = np.asarray(boxes.boxes_to_ltrb(jnp.asarray(points), jnp.asarray(gt)))
    want = [[p[0] - g[0], p[1] - g[1], g[2] - p[0], g[3] - p[1]] for p, g in zip(points.tolist(), gt.tolist())]
    np.testing.assert_allclose(ltrb, want)
    np.testing.assert_allclose(np.asarray(boxes.ltrb_to_boxes(jnp.asarray(points), jnp.asarray(ltrb))), gt)
    # broadcast: points [N, 1, 2] against boxes [1, G, 4] -> [N, G, 4]
    pairwise = boxes.boxes_to_ltrb(jnp.asarray(points)[:, None], jnp.asarray(gt)[None])
    assert pairwise.shape == (3, 3, 4)
    np.testing.assert_allclose(np.asarray(pairwise)[1, 0], [10, 2, 0, 8])


def ref_encode(anchor, gt):
    ax, ay = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    gx, gy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    return [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]


def ref_decode(anchor, delta):
    clamp = abs(math.log(16 / 1000))
    ax, ay = (anchor[0] + anchor[2]) / 2, (anchor[1] + anchor[3]) / 2
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    dw = min(max(delta[2], -clamp), clamp)
    dh = min(max(delta[3], -clamp), clamp)
    cx, cy = ax + delta[0] * aw, ay + delta[1] * ah
    w, h = aw * math.exp(dw), ah * math.exp(dh)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_delta_coder_against_reference():
    anchors = np.array([[0, 0, 32, 32], [-16, -8, 16, 8], [100, 50, 164, 178]], np.float32)
    gt = np.array([[4, 2, 30, 40], [-10, -10, 20, 4], [90, 60, 200, 150]], np.float32)
    deltas = np.asarray(boxes.encode_deltas(jnp.asarray(anchors), jnp.asarray(gt)))
    np.testing.assert_allclose(deltas, [ref_encode(a, g) for a, g in zip(anchors.tolist(), gt.tolist())],
                               rtol=1e-5, atol=1e-6)
    decoded = np.asarray(boxes.decode_deltas(jnp.asarray(anchors), jnp.asarray(deltas)))
    np.testing.assert_allclose(decoded, gt, rtol=1e-5, atol=1e-4)


def test_delta_decode_clamps_log_scale():
    assert boxes.DELTA_WH_CLAMP == pytest.approx(4.135166556742356)
    anchors = np.array([[0, 0, 10, 20]] * 4, np.float32)
    deltas = np.array([[0, 0, 10.0, -10.0], [0.5, -0.5, 4.0, 4.2], [0, 0, -4.2, 0], [1, 1, 0, 0]], np.float32)
    got = np.asarray(boxes.decode_deltas(jnp.asarray(anchors), jnp.asarray(deltas)))
    want = [ref_decode(a, d) for a, d in zip(anchors.tolist(), deltas.tolist())]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # the clamp: width 10 * 1000/16 = 625 at most, height 20 * 16/1000 = 0.32 at least.
    assert got[0, 2] - got[0, 0] == pytest.approx(625.0, rel=1e-5)
    assert got[0, 3] - got[0, 1] == pytest.approx(0.32, rel=1e-5)


def test_clip_to_image_broadcasts_per_image():
    b = np.array([[[-5, -3, 50, 70], [10, 10, 20, 20]], [[-1, 5, 300, 90], [40, -2, 41, 200]]], np.float32)
    shapes = np.array([[60, 40], [80, 100]], np.int32)            # (h, w) per image
    got = np.asarray(boxes.clip_to_image(jnp.asarray(b), jnp.asarray(shapes)[:, None, :]))
    want = np.empty_like(b)
    for i in range(2):
        h, w = shapes[i]
        for j in range(2):
            x1, y1, x2, y2 = b[i, j]
            want[i, j] = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
    np.testing.assert_allclose(got, want)


def test_box_ops_jit_and_vmap():
    a = jnp.asarray(BOXES_A)
    b = jnp.asarray(BOXES_B)
    jitted = jax.jit(jax.vmap(boxes.pairwise_giou, in_axes=(0, None)))(jnp.stack([a, a + 1.0]), b)
    assert jitted.shape == (2, len(BOXES_A), len(BOXES_B))
    np.testing.assert_allclose(np.asarray(jitted[0]), np.asarray(boxes.pairwise_giou(a, b)), rtol=1e-6)
