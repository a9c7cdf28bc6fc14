"""Transforms and buckets of date_jax.data against hand-computed sizes and plain step-by-step numpy references."""
import numpy as np
import pytest

from date_jax import config as config_lib
from date_jax.data import buckets, transforms


def scales_for(pipeline, **overrides):
    data = config_lib.data_config()
    data.pipeline = pipeline
    data.update(overrides)
    return transforms.scales_from_config(data)


def test_rescale_size_hand_computed():
    # (h, w) -> factor min(1333 / long, 800 / short), sizes int(x * f + 0.5) as mmcv.
    got = transforms.rescale_size(np.array([480, 427, 100, 640]), np.array([640, 640, 1000, 480]), 800, 1333)
    np.testing.assert_array_equal(got, [[800, 1067], [800, 1199], [133, 1333], [1067, 800]])


def test_pipeline_scales_follow_spec():
    assert scales_for("1x").train_short == (800,) and not scales_for("1x").two_policy
    s3 = scales_for("3x")
    assert s3.train_short == tuple(range(480, 801, 32)) and s3.crop_short == (400, 500, 600) and s3.two_policy
    assert scales_for("crowdhuman", max_size=1400).train_short[-1] == 896
    assert scales_for("1x", train_short_sizes=(128, 160)).train_short == (128, 160)
    with pytest.raises(ValueError, match="pipeline"):
        scales_for("5x")


# ---- plain, sequential reference of the mmdet steps (one box at a time) ----

def ref_flip(box, w):
    x1, y1, x2, y2 = box
    return [w - x2, y1, w - x1, y2]


def ref_resize(box, h, w, new_h, new_w):
    sx, sy = new_w / w, new_h / h
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    return [min(max(x1, 0), new_w), min(max(y1, 0), new_h), min(max(x2, 0), new_w), min(max(y2, 0), new_h)]


def ref_crop(box, y0, x0, ch, cw):
    x1, y1, x2, y2 = box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0
    clipped = [min(max(x1, 0), cw), min(max(y1, 0), ch), min(max(x2, 0), cw), min(max(y2, 0), ch)]
    return clipped, clipped[2] > clipped[0] and clipped[3] > clipped[1]


def reference_boxes(boxes, h, w, flip, resize_hw, crop, out_hw):
    out = []
    for box in boxes.tolist():
        if flip:
            box = ref_flip(box, w)
        box = ref_resize(box, h, w, *resize_hw)
        box, valid = ref_crop(box, *crop)
        box = ref_resize(box, crop[2], crop[3], *out_hw)
        out.append((box, valid))
    return out


@pytest.mark.parametrize("pipeline", ["1x", "3x", "crowdhuman"])
def test_box_transforms_match_sequential_reference(pipeline):
    rng = np.random.default_rng(1)
    n = 60
    heights, widths = rng.integers(200, 900, n), rng.integers(200, 900, n)
    plan = transforms.plan_train(heights, widths, scales_for(pipeline), np.random.default_rng(7))
    for i in range(n):
        x1 = rng.uniform(-20, widths[i], 6)
        y1 = rng.uniform(-20, heights[i], 6)
        boxes = np.stack([x1, y1, x1 + rng.uniform(1, 300, 6), y1 + rng.uniform(1, 300, 6)], 1)
        boxes = np.clip(boxes, 0, [widths[i], heights[i], widths[i], heights[i]])
        got, keep = transforms.transform_boxes(boxes, np.full(len(boxes), i), heights, widths, plan)
        ref = reference_boxes(boxes, heights[i], widths[i], plan.flip[i], plan.resize_hw[i], plan.crop[i],
                              plan.out_hw[i])
        np.testing.assert_allclose(got, np.array([b for b, _ in ref]), rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(keep, [v for _, v in ref])


def test_random_parameters_respect_spec_ranges():
    s = scales_for("3x")
    n = 4000
    heights, widths = np.full(n, 480), np.full(n, 640)
    plan = transforms.plan_train(heights, widths, s, np.random.default_rng(0))
    assert 0.45 < plan.flip.mean() < 0.55
    cropped = np.any(plan.crop[:, 2:] != plan.resize_hw, axis=1) | np.any(plan.crop[:, :2] != 0, axis=1)
    assert 0.4 < cropped.mean() < 0.6
    # policy (b): pre-crop short side in {400, 500, 600}, crop sides in [384, 600] within the image, offsets inside.
    assert set(np.unique(plan.resize_hw[cropped, 0])) <= {400, 500, 600}
    ch, cw = plan.crop[cropped, 2], plan.crop[cropped, 3]
    assert ch.min() >= 384 and cw.min() >= 384 and ch.max() <= 600 and cw.max() <= 600
    assert np.all(ch <= plan.resize_hw[cropped, 0]) and np.all(cw <= plan.resize_hw[cropped, 1])
    assert np.all(plan.crop[cropped, 0] + ch <= plan.resize_hw[cropped, 0])
    assert np.all(plan.crop[cropped, 1] + cw <= plan.resize_hw[cropped, 1])
    # final sizes: short side one of the multi-scale values unless the long cap binds; long side <= 1333.
    assert plan.out_hw.max() <= 1333
    free = plan.out_hw.max(1) < 1333
    assert set(np.unique(plan.out_hw[free].min(1))) <= set(range(480, 801, 32))
    # policy (a) keeps 4:3
    np.testing.assert_allclose(plan.out_hw[~cropped, 1] / plan.out_hw[~cropped, 0], 4 / 3, atol=2e-3)


def test_test_plan_is_single_scale_without_flip():
    plan = transforms.plan_test(np.array([480, 640]), np.array([640, 427]), scales_for("1x"))
    assert not plan.flip.any()
    np.testing.assert_array_equal(plan.out_hw, [[800, 1067], [1199, 800]])
    np.testing.assert_allclose(plan.scale(np.array([480, 640]), np.array([640, 427])),
                               [[800 / 480, 1067 / 640], [1199 / 640, 800 / 427]], rtol=1e-6)


def test_image_follows_boxes_through_flip_resize_crop():
    """Paint boxes into an image, transform the pixels with TF, and find each painted box where the boxes went."""
    h, w = 120, 160
    image = np.zeros((h, w, 3), np.uint8)
    boxes = np.array([[10, 20, 50, 70], [90, 15, 150, 45], [70, 80, 130, 115]], np.float64)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), colours):
        image[y1:y2, x1:x2] = colour
    cases = [
        transforms.TransformPlan(np.array([False]), np.array([[150, 200]]), np.array([[0, 0, 150, 200]]),
                                 np.array([[150, 200]])),
        transforms.TransformPlan(np.array([True]), np.array([[96, 128]]), np.array([[0, 0, 96, 128]]),
                                 np.array([[96, 128]])),
        transforms.TransformPlan(np.array([True]), np.array([[180, 240]]), np.array([[30, 20, 120, 200]]),
                                 np.array([[96, 213]])),
    ]
    for plan in cases:
        out = transforms.transform_image(image, plan.flip[0], plan.resize_hw[0], plan.crop[0], plan.out_hw[0])
        assert out.shape == (*plan.out_hw[0], 3) and out.dtype == np.uint8
        moved, keep = transforms.transform_boxes(boxes, np.zeros(len(boxes), int), np.array([h]), np.array([w]), plan)
        for box, valid, colour in zip(moved, keep, colours):
            channel = int(np.argmax(colour))
            painted = (out[..., channel] > 127) & (out.sum(-1) - out[..., channel].astype(int) < 128)
            if not valid:
                continue
            ys, xs = np.nonzero(painted)
            found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            np.testing.assert_allclose(found, box, atol=1.01)


def test_buckets_fit_and_depend_on_aspect_only():
    s = scales_for("3x")
    n = 500
    rng = np.random.default_rng(3)
    heights, widths = rng.integers(200, 900, n), rng.integers(200, 900, n)
    plan = transforms.plan_train(heights, widths, s, np.random.default_rng(5))
    shapes = buckets.bucket_shapes(plan.out_hw, s.max_train_short, s.max_size, 128)
    assert np.all(shapes % 128 == 0) and np.all(shapes >= plan.out_hw)
    # the same image at every scale of policy (a) lands in one bucket (up to a rounding step at a boundary)
    same = transforms.rescale_size(np.full(11, 480), np.full(11, 640), np.arange(480, 801, 32), 1333)
    assert len({tuple(b) for b in buckets.bucket_shapes(same, 800, 1333, 128)}) == 1
    portrait = buckets.bucket_shapes(np.array([[1067, 800]]), 800, 1333, 128)
    np.testing.assert_array_equal(portrait, [[1152, 896]])


def test_group_into_batches_against_reference():
    rng = np.random.default_rng(0)
    keys = np.array([[1, 2], [2, 1], [3, 3]])[rng.integers(0, 3, 101)]
    order = rng.permutation(101)
    batches, leftovers = buckets.group_into_batches(order, keys, 8)
    # reference: per bucket, consecutive runs of 8 in the visiting order
    per_bucket = {}
    for i in order:
        per_bucket.setdefault(tuple(keys[i]), []).append(i)
    expected = {(k, tuple(v[j:j + 8])) for k, v in per_bucket.items() for j in range(0, len(v) - 7, 8)}
    assert {(k, tuple(idx)) for k, idx in batches} == expected
    assert all(np.all(keys[idx] == k) for k, idx in batches)
    assert all(len(idx) < 8 for _, idx in leftovers)
    covered = np.concatenate([idx for _, idx in batches] + [idx for _, idx in leftovers])
    np.testing.assert_array_equal(np.sort(covered), np.arange(101))
    # completion order: a batch is emitted when its 8th member is visited
    position = np.argsort(order)
    completed = [position[idx].max() for _, idx in batches]
    assert completed == sorted(completed)


@pytest.mark.parametrize("flip,resize_hw,crop,out_hw", [
    (False, (150, 200), (0, 0, 150, 200), (150, 200)),      # resize only
    (True, (120, 160), (0, 0, 120, 160), (120, 160)),       # flip, no resize
    (True, (180, 240), (30, 20, 120, 200), (96, 213)),      # flip, resize, crop, resize
])
def test_transform_image_pads_in_place_like_resize_then_pad(flip, resize_hw, crop, out_hw):
    """The bucket-padded output, allocated or written into a given array, equals OpenCV's flip/resize/crop/resize
    followed by zero padding."""
    import cv2

    image = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    expected = cv2.flip(image, 1) if flip else image
    if expected.shape[:2] != resize_hw:
        expected = cv2.resize(expected, resize_hw[::-1], interpolation=cv2.INTER_LINEAR)
    y0, x0, ch, cw = crop
    expected = np.ascontiguousarray(expected[y0:y0 + ch, x0:x0 + cw])
    if expected.shape[:2] != out_hw:
        expected = cv2.resize(expected, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((256, 320, 3), np.uint8)
    padded[:out_hw[0], :out_hw[1]] = expected
    np.full(256 * 320 * 3 + 64, 255, np.uint8).sum()       # leave non-zero bytes where the canvas may be allocated
    out = transforms.transform_image(image, flip, np.array(resize_hw), np.array(crop), np.array(out_hw),
                                     np.array([256, 320]))
    np.testing.assert_array_equal(out, padded)
    given = np.full((2, 256, 320, 3), 255, np.uint8)
    returned = transforms.transform_image(image, flip, np.array(resize_hw), np.array(crop), np.array(out_hw),
                                          out=given[1])
    np.testing.assert_array_equal(given[1], padded)
    assert np.shares_memory(returned, given) and (given[0] == 255).all()
