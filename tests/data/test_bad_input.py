"""Bad inputs written by the test: each is skipped or repaired, counted and logged once; nothing crashes."""
import io
import itertools
import json
import logging

import numpy as np
import pytest
from PIL import Image

from date_jax import config as config_lib
from date_jax.data import codecs, pipeline
from date_jax.data import issues as issues_lib

SIZE = 64


def write_image(path, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(30, 220, (SIZE, SIZE, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return pixels


@pytest.fixture()
def bad_set(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    write_image(images_dir / "good.jpg")
    gray = write_image(images_dir / "gray.png", "L", seed=1)
    write_image(images_dir / "rgba.png", "RGBA", seed=2)
    (images_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    write_image(images_dir / "many.jpg", seed=3)
    write_image(images_dir / "crowd_only.jpg", seed=4)
    names = ["good.jpg", "gray.png", "rgba.png", "corrupt.jpg", "missing.jpg", "many.jpg", "crowd_only.jpg"]
    images = [dict(id=i + 1, file_name=n, height=SIZE, width=SIZE) for i, n in enumerate(names)]
    images.append(dict(id=50, file_name="no_size.jpg", height=0, width=SIZE))
    anns = []

    def ann(image_id, bbox, category=1, crowd=0, area=None):
        anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=category, bbox=bbox, iscrowd=crowd,
                         area=bbox[2] * bbox[3] if area is None else area))

    ann(1, [5, 5, 20, 20])
    ann(1, [50, 50, 30, 30])            # partly outside: clipped
    ann(1, [100, 100, 10, 10])          # entirely outside: dropped
    ann(1, [10, 10, 0.5, 10])           # w < 1: dropped
    ann(1, [10, 10, 5, 5], area=0)      # zero area: dropped
    ann(1, [10, 10, 5, 5], category=99)  # unknown category: dropped
    ann(1, [0, 0, 30, 30], crowd=1)     # crowd: not a training target
    for image_id in (2, 3, 4, 5):
        ann(image_id, [8, 8, 30, 30], category=2)
    for k in range(30):                 # 30 boxes, max_boxes 10: the 10 largest stay
        ann(6, [k, k, 4 + k, 3 + k])
    ann(7, [2, 2, 30, 30], crowd=1)
    ann(999, [2, 2, 30, 30])            # unknown image
    (tmp_path / "annotations").mkdir()
    with open(tmp_path / "annotations" / "bad.json", "w") as f:
        json.dump(dict(images=images, annotations=anns,
                       categories=[dict(id=2, name="b"), dict(id=1, name="a")]), f)
    c = config_lib.base_config()
    c.data.update(source="coco", root=str(tmp_path), train_ann="annotations/bad.json", train_images="images",
                  val_ann="annotations/bad.json", val_images="images", train_short_sizes=(SIZE,), max_size=SIZE,
                  test_short_size=SIZE, bucket_divisor=SIZE, batch_size=5, eval_batch_size=4, max_boxes=10,
                  prefetch=1)
    return c, gray


def test_annotation_rules_and_counts(bad_set, caplog):
    config, _ = bad_set
    with caplog.at_level(logging.WARNING, logger="date_jax.data"):
        records, issues = pipeline.load_split(config, "train")
    assert dict(issues.counts) == dict(unknown_category=1, degenerate_box=2, box_outside_image=1, box_clipped=1,
                                       missing_image_file=1, annotation_unknown_image=1, bad_image_record=1,
                                       no_training_boxes=1)
    assert sorted(records.image_ids.tolist()) == [1, 2, 3, 4, 6]
    first = records.image_ids.tolist().index(1)
    np.testing.assert_allclose(records.boxes[first], [[5, 5, 25, 25], [50, 50, 64, 64]])
    np.testing.assert_array_equal(records.labels[first], [0, 0])    # category 1 sorts first -> label 0
    assert pipeline.dataset_info(config, "train").category_ids == (1, 2)
    assert pipeline.dataset_info(config, "val").num_images == 6       # evaluation keeps the crowd-only image
    train_notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("coco:train")]
    assert sum("further ones are counted" in m for m in train_notes) == 8      # one line per kind
    assert sum("data issues so far" in m for m in train_notes) == 1           # and one summary


def test_training_survives_corrupt_gray_and_rgba_images(bad_set, caplog):
    config, gray = bad_set
    with caplog.at_level(logging.WARNING, logger="date_jax.data"):
        stream = pipeline.train_batches(config, process_index=0, process_count=1)
        batches = list(itertools.islice(stream, 3))       # one batch per epoch
        stream.close()                                    # joins the thread that assembles the next epoch ahead
    _, issues = pipeline.load_split(config, "train")
    assert issues.counts["unreadable_image"] == 1           # the corrupt image: once, though read every epoch
    assert issues.counts["channels_repaired"] == 2          # gray + rgba
    assert issues.counts["too_many_boxes"] == 1
    first_lines = [r.getMessage() for r in caplog.records if "further ones are counted" in r.getMessage()]
    assert sum("could not be read" in m for m in first_lines) == 1     # logged once, then only in summaries
    for batch in batches:
        assert batch["image"].shape == (5, SIZE, SIZE, 3) and batch["example_mask"].all()
        ids = batch["image_id"].tolist()
        assert 4 not in ids                                 # the corrupt slot was refilled with a readable image
        for i, j in itertools.combinations(range(len(ids)), 2):
            if ids[i] == ids[j]:                            # ... a copy of its pixels, not leftover memory
                np.testing.assert_array_equal(batch["image"][i], batch["image"][j])
        slot = ids.index(2)                                 # grayscale: three equal channels, close to the source
        image = batch["image"][slot].astype(int)
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        if not batch["boxes"][slot, 0, 0] > SIZE / 2:      # not flipped
            assert np.abs(image[..., 0] - gray[..., 0]).mean() < 1
        many = ids.index(6)
        assert batch["box_mask"][many].sum() == 10
        widths = np.sort(batch["boxes"][many, :, 2] - batch["boxes"][many, :, 0])
        np.testing.assert_allclose(widths, np.arange(24, 34))   # the ten largest of widths 4..33


def test_evaluation_pads_unreadable_images_and_missing_files_at_run_time(bad_set):
    config, _ = bad_set
    config.data.check_files = False
    batches = list(pipeline.eval_batches(config, process_index=0, process_count=1))
    _, issues = pipeline.load_split(config, "val")
    assert issues.counts["unreadable_image"] == 2           # corrupt.jpg and missing.jpg
    valid = np.concatenate([b["image_id"][b["example_mask"]] for b in batches])
    assert sorted(valid.tolist()) == [1, 2, 3, 6, 7]
    padding = np.concatenate([b["image"][~b["example_mask"]] for b in batches])
    assert len(padding) >= 2 and not padding.any()          # unreadable and padding slots hold zeros


def test_missing_paths_name_the_path_and_the_layout(tmp_path):
    config = config_lib.base_config()
    config.data.root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json.*layout"):
        pipeline.dataset_info(config, "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="val2017.*not found.*layout"):
        pipeline.dataset_info(config, "val")


@pytest.mark.parametrize("mode,fmt,stored", [("RGB", "JPEG", 3), ("L", "JPEG", 1), ("CMYK", "JPEG", 4),
                                             ("L", "PNG", 1), ("LA", "PNG", 2), ("RGBA", "PNG", 4), ("P", "PNG", 3)])
def test_decode_gives_rgb_like_pillow_and_reports_stored_channels(mode, fmt, stored):
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 255, (4, 5, 3), dtype=np.uint8), 8, 0), 8, 1)   # flat 8x8 cells
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt, quality=95)
    image = codecs.decode_rgb(buffer.getvalue())
    channels = codecs.stored_channels(buffer.getvalue())
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float64)
    assert int(channels) == stored and image.shape == expected.shape
    assert np.abs(image - expected).mean() < 2.0


def _orientation_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6      # orientation: rotate 90
    return exif.tobytes()


@pytest.mark.parametrize("mode,fmt,options", [
    ("RGB", "JPEG", dict(progressive=True)), ("L", "JPEG", dict(progressive=True)),
    ("CMYK", "JPEG", dict(dpi=(72, 72))),
    ("RGB", "JPEG", dict(exif=_orientation_exif())), ("I;16", "PNG", {}), ("1", "PNG", {}),
    ("RGB", "BMP", {}), ("RGBA", "TIFF", {})])
def test_stored_channels_from_headers_match_pillows_bands(mode, fmt, options):
    """Frame/IHDR header parsing (progressive and EXIF-carrying JPEGs, 16-bit and 1-bit PNGs) and the Pillow fallback
    (BMP, TIFF) agree with the bands Pillow reports."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (24, 40, 3), dtype=np.uint8)).convert(mode).save(
        buffer, fmt, **options)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        bands = len(image.getbands())
    assert codecs.stored_channels(buffer.getvalue()) == bands
    assert codecs.stored_channels(buffer.getvalue()[:6]) == 3     # a truncated stream: OpenCV's 3 channels


@pytest.fixture()
def empty_file_set(tmp_path):
    """Three readable images and one zero-byte file with four boxes."""
    (tmp_path / "images").mkdir()
    names = ["a.jpg", "b.jpg", "empty.jpg", "c.jpg"]
    for seed, name in enumerate(names):
        if name == "empty.jpg":
            (tmp_path / "images" / name).write_bytes(b"")
        else:
            write_image(tmp_path / "images" / name, seed=seed)
    images = [dict(id=i + 1, file_name=n, height=SIZE, width=SIZE) for i, n in enumerate(names)]
    anns = [dict(id=len(images) * k + i + 1, image_id=i + 1, category_id=1, bbox=[4 + 10 * k, 4, 8, 8], area=64,
                 iscrowd=0) for i in range(len(names)) for k in range(4)]
    (tmp_path / "annotations").mkdir()
    with open(tmp_path / "annotations" / "set.json", "w") as f:
        json.dump(dict(images=images, annotations=anns, categories=[dict(id=1, name="a")]), f)
    c = config_lib.base_config()
    c.data.update(source="coco", root=str(tmp_path), train_ann="annotations/set.json", train_images="images",
                  val_ann="annotations/set.json", val_images="images", train_short_sizes=(SIZE,), max_size=SIZE,
                  test_short_size=SIZE, bucket_divisor=SIZE, batch_size=2, eval_batch_size=2, prefetch=1)
    return c


def test_zero_byte_image_is_skipped_at_start_up_and_counted(empty_file_set):
    records, issues = pipeline.load_split(empty_file_set, "train")
    assert sorted(records.image_ids.tolist()) == [1, 2, 4]
    assert issues.counts["empty_image_file"] == 1 and pipeline.dataset_info(empty_file_set, "train").num_images == 3


def test_zero_byte_image_is_never_trained_and_counted_once_per_image(empty_file_set, caplog):
    config = empty_file_set
    config.data.check_files = False           # not caught at start-up: it must be caught where it is read
    stream = pipeline.train_batches(config, process_index=0, process_count=1)
    batches = list(itertools.islice(stream, 6))                         # three epochs of two batches
    stream.close()
    ids = np.concatenate([b["image_id"] for b in batches]).tolist()
    assert 3 not in ids and {1, 2, 4} <= set(ids)
    for batch in batches:
        for image, shape in zip(batch["image"], batch["image_shape"]):
            assert image[:shape[0], :shape[1]].std() > 20                # every trained image has its pixels
    _, issues = pipeline.load_split(config, "train")
    assert issues.counts["unreadable_image"] == 1                       # one image, read in every epoch
    with caplog.at_level(logging.WARNING, logger="date_jax.data"):
        line = pipeline.log_issue_summary(config)
    assert line == f"1 {issues_lib.KINDS['unreadable_image']}"
    assert any("data issues in this run" in r.getMessage() and line in r.getMessage() for r in caplog.records)


def test_zero_byte_image_in_validation_is_padding_and_counted_once(empty_file_set):
    config = empty_file_set
    config.data.check_files = False
    for _ in range(2):                                                  # two evaluations of one run
        batches = list(pipeline.eval_batches(config, process_index=0, process_count=1))
        valid = np.concatenate([b["image_id"][b["example_mask"]] for b in batches])
        assert sorted(valid.tolist()) == [1, 2, 4]
        assert not np.concatenate([b["image"][~b["example_mask"]] for b in batches]).any()
    _, issues = pipeline.load_split(config, "val")
    assert issues.counts["unreadable_image"] == 1
