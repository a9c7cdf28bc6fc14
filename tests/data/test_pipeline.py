"""Batch contract, per-process shards, resume and evaluation batches on a small synthetic set written by the test."""
import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

from date_jax import config as config_lib
from date_jax.data import pipeline, synthetic

MAX_BOXES = 20


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.ensure_synthetic_dataset(root, num_train=40, num_val=11, image_size=96, seed=3)
    c = config_lib.base_config()
    c.data.update(source="synthetic", root=root, train_short_sizes=(64, 96), max_size=160, test_short_size=96,
                  bucket_divisor=64, batch_size=4, eval_batch_size=4, max_boxes=MAX_BOXES, prefetch=1)
    return c


def json_records(config, split):
    with open(synthetic.split_paths(config.data.root, split)[0]) as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    boxes = {i: [] for i in images}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append([x, y, x + w, y + h])
    return images, boxes


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_dataset_info(config):
    info = pipeline.dataset_info(config, "train")
    assert info.num_images == 40 and info.category_ids == (1, 2, 3, 4)
    assert info.category_names == synthetic.CATEGORIES and info.ann_file.endswith("instances_train.json")
    assert pipeline.dataset_info(config, "val").num_images == 11


def test_batch_contract_and_boxes_against_json(config):
    images, json_boxes = json_records(config, "train")
    for batch in take(pipeline.train_batches(config, process_index=0, process_count=1), 3):
        b, hh, ww, _ = batch["image"].shape
        assert b == 4 and hh % 64 == 0 and ww % 64 == 0
        expected = dict(image=np.uint8, boxes=np.float32, labels=np.int32, box_mask=np.bool_, image_shape=np.int32,
                        image_id=np.int64, scale=np.float32, example_mask=np.bool_)
        assert {k: v.dtype.type for k, v in batch.items()} == expected
        assert batch["boxes"].shape == (4, MAX_BOXES, 4) and batch["labels"].shape == (4, MAX_BOXES)
        assert batch["example_mask"].all()
        for i in range(b):
            im = images[int(batch["image_id"][i])]
            oh, ow = batch["image_shape"][i]
            assert min(oh, ow) in (64, 96) or max(oh, ow) == 160
            np.testing.assert_allclose(batch["scale"][i], [oh / im["height"], ow / im["width"]], rtol=1e-6)
            assert not batch["image"][i, oh:].any() and not batch["image"][i, :, ow:].any()   # zero padding
            assert batch["image"][i, :oh, :ow].std() > 5
            n = int(batch["box_mask"][i].sum())
            assert not batch["box_mask"][i, n:].any() and (batch["labels"][i, :n] < 4).all()
            ref = np.array(json_boxes[im["id"]]) * np.tile(batch["scale"][i][::-1], 2)
            flipped = ref.copy()
            flipped[:, [0, 2]] = ow - ref[:, [2, 0]]
            got = batch["boxes"][i, :n]
            assert len(got) == len(ref)
            assert np.allclose(got, ref, atol=1e-3) or np.allclose(got, flipped, atol=1e-3)


def test_process_shards_are_disjoint_and_cover_the_global_batch(config):
    whole = take(pipeline.train_batches(config, process_index=0, process_count=1), 3)
    shards = [take(pipeline.train_batches(config, process_index=p, process_count=2), 3) for p in range(2)]
    for step, batch in enumerate(whole):
        parts = [shards[p][step] for p in range(2)]
        ids = [set(part["image_id"].tolist()) for part in parts]
        assert not ids[0] & ids[1]
        assert ids[0] | ids[1] == set(batch["image_id"].tolist())
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), batch[key])
    with pytest.raises(ValueError, match="batch_size"):
        next(pipeline.train_batches(config, process_index=0, process_count=3))


def test_epoch_visits_each_image_at_most_once(config):
    records, _ = pipeline.load_split(config, "train")
    _, batches = pipeline.epoch_plan(config, records, epoch=0)
    indices = np.concatenate([idx for _, idx in batches])
    assert len(np.unique(indices)) == len(indices) >= 20
    _, again = pipeline.epoch_plan(config, records, epoch=0)
    _, other = pipeline.epoch_plan(config, records, epoch=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(batches, other))


@pytest.mark.parametrize("offset", [-1, 1])
def test_resume_reproduces_the_batches_of_a_fresh_run(config, offset):
    records, _ = pipeline.load_split(config, "train")
    per_epoch = len(pipeline.epoch_plan(config, records, 0)[1])
    start = per_epoch + offset     # resumed in epoch 0 crossing the boundary, or resumed within epoch 1
    fresh = take(pipeline.train_batches(config, process_index=1, process_count=2), start + 3)
    resumed = take(pipeline.train_batches(config, start_step=start, process_index=1, process_count=2), 3)
    for a, b in zip(fresh[start:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_eval_batches_cover_validation_once_and_match_across_processes(config):
    images, _ = json_records(config, "val")
    single = list(pipeline.eval_batches(config, process_index=0, process_count=1))
    shards = [list(pipeline.eval_batches(config, process_index=p, process_count=2)) for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for batches in (single, shards[0] + shards[1]):
        ids = np.concatenate([b["image_id"][b["example_mask"]] for b in batches])
        assert sorted(ids.tolist()) == sorted(images)
        for b in batches:
            assert (b["image_id"][~b["example_mask"]] == -1).all() and not b["box_mask"][~b["example_mask"]].any()
    again = list(pipeline.eval_batches(config, process_index=0, process_count=1))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(single, again))
    limited = list(pipeline.eval_batches(config, process_index=0, process_count=1, num_images=5))
    assert sum(int(b["example_mask"].sum()) for b in limited) == 5


def test_eval_image_is_the_resized_original(config):
    images, _ = json_records(config, "val")
    batch = next(pipeline.eval_batches(config, process_index=0, process_count=1))
    image_dir = synthetic.split_paths(config.data.root, "val")[1]
    for i in range(int(batch["example_mask"].sum())):
        im = images[int(batch["image_id"][i])]
        oh, ow = batch["image_shape"][i]
        assert min(oh, ow) == 96 or max(oh, ow) == 160
        original = Image.open(os.path.join(image_dir, im["file_name"])).convert("RGB")
        expected = np.asarray(original.resize((int(ow), int(oh)), Image.BILINEAR), np.float64)
        assert np.abs(batch["image"][i, :oh, :ow] - expected).mean() < 4.0
