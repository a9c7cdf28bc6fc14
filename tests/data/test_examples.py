"""One example through `load_example` and `prepare_image`: boxes by hand, pixels against Pillow, and the same result as
the evaluation batches."""
import json

import numpy as np
import pytest
from PIL import Image

from date_jax import config as config_lib
from date_jax.data import codecs, examples, pipeline, transforms
from date_jax.data.coco import Annotations
from date_jax.data.issues import DataIssues


def test_fit_boxes_keeps_the_largest_in_annotation_order():
    boxes = np.array([[0, 0, 2, 2], [0, 0, 10, 10], [5, 5, 10, 10], [1, 1, 4, 4]], np.float32)   # areas 4 100 25 9
    labels = np.array([7, 8, 9, 6], np.int32)
    got, got_labels, mask = examples.fit_boxes(boxes, labels, 2)
    np.testing.assert_array_equal(got, boxes[[1, 2]])
    np.testing.assert_array_equal(got_labels, [8, 9])
    assert mask.tolist() == [True, True]
    got, got_labels, mask = examples.fit_boxes(boxes[:1], labels[:1], 3)
    np.testing.assert_array_equal(got, [[0, 0, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert mask.tolist() == [True, False, False] and got_labels.tolist() == [7, 0, 0]


def test_load_example_moves_pixels_and_boxes_together(tmp_path):
    """A 40x60 image with a bright block under its box, flipped and resized to 80x120: the box (by hand) lies on the
    block in the output pixels."""
    pixels = np.full((40, 60, 3), 20, np.uint8)
    pixels[10:20, 5:25] = 240                                   # the box x 5..25, y 10..20
    Image.fromarray(pixels).save(tmp_path / "a.png")
    records = Annotations(image_ids=np.array([9]), heights=np.array([40], np.int32), widths=np.array([60], np.int32),
                          file_paths=[str(tmp_path / "a.png")], boxes=[np.array([[5, 10, 25, 20]], np.float32)],
                          labels=[np.array([2], np.int32)], category_ids=[1, 2, 3], category_names=["a", "b", "c"])
    plan = transforms.TransformPlan(flip=np.array([True]), resize_hw=np.array([[80, 120]], np.int32),
                                    crop=np.array([[0, 0, 80, 120]], np.int32), out_hw=np.array([[80, 120]], np.int32))
    issues = DataIssues("test")
    example = examples.load_example(records, 0, plan, (128, 128), 3, issues)
    # flipped: x 60-25=35 .. 60-5=55, then x2: 70..110, y 20..40
    np.testing.assert_allclose(example["boxes"], [[70, 20, 110, 40], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert example["labels"].tolist() == [2, 0, 0] and example["box_mask"].tolist() == [True, False, False]
    assert example["image_shape"].tolist() == [80, 120] and int(example["image_id"]) == 9
    np.testing.assert_allclose(example["scale"], [2, 2])
    image = example["image"]
    assert image.shape == (128, 128, 3) and not image[80:].any() and not image[:, 120:].any()
    assert image[22:38, 72:108].min() > 200 and image[45:75, 5:60].max() < 60     # block inside the box, dark outside
    assert not issues.counts


def test_unreadable_files_raise_one_clear_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not an image" * 5)
    with pytest.raises(codecs.UnreadableImageError, match="empty.jpg: empty file"):
        examples.read_image(str(tmp_path / "empty.jpg"))
    with pytest.raises(codecs.UnreadableImageError, match="junk.jpg: .* do not decode"):
        examples.read_image(str(tmp_path / "junk.jpg"))
    with pytest.raises(codecs.UnreadableImageError, match="missing.jpg"):
        examples.read_image(str(tmp_path / "missing.jpg"))
    data = config_lib.base_config().data
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8 RGB image"):
            examples.prepare_image(bad, data)


def test_prepare_image_equals_the_evaluation_example(tmp_path):
    """The Python API's preparation of a file's pixels gives the evaluation batch's image, image_shape and scale."""
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (90, 40), (64, 64)]
    (tmp_path / "images").mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    with open(tmp_path / "val.json", "w") as f:
        json.dump(dict(images=[dict(id=i + 1, file_name=f"{i}.png", height=h, width=w) for i, (h, w) in
                               enumerate(sizes)], annotations=[], categories=[dict(id=1, name="a")]), f)
    config = config_lib.base_config()
    config.data.update(root=str(tmp_path), val_ann="val.json", val_images="images", test_short_size=96, max_size=128,
                       bucket_divisor=32, eval_batch_size=1)
    for batch in pipeline.eval_batches(config, process_index=0, process_count=1):
        index = int(batch["image_id"][0]) - 1
        image, image_shape, scale = examples.prepare_image(
            examples.read_image(str(tmp_path / "images" / f"{index}.png")), config.data)
        np.testing.assert_array_equal(image, batch["image"][0])
        np.testing.assert_array_equal(image_shape, batch["image_shape"][0])
        np.testing.assert_allclose(scale, batch["scale"][0], rtol=1e-6)
        assert image_shape.dtype == np.int32 and scale.dtype == np.float32
        h, w = sizes[index]
        assert image_shape.tolist() == transforms.rescale_size(h, w, 96, 128).tolist()
