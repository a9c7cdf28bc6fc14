"""The tfds source on a tiny prepared data set with coco/2017's features, in tfds's default TFRecord format and in
ArrayRecord: the same batches as its COCO-json twin, and exact resume."""
import itertools
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from date_jax import config as config_lib
from date_jax.data import pipeline, tfds_source

NAMES = ["cat", "dog", "bird"]
# image id, (h, w), [(x, y, w, h, label, crowd), ...]
SCENES = [
    (7, (60, 80), [(5, 6, 20, 30, 0, False), (40, 10, 30, 30, 2, False), (0, 0, 60, 50, 1, True)]),
    (3, (64, 64), [(10, 10, 40, 20, 1, False)]),
    (12, (48, 72), [(1, 2, 30, 40, 2, False), (50, 5, 20, 20, 0, False)]),
    (5, (70, 56), [(0, 0, 2, 2, 0, True)]),           # crowd only: skipped in training, kept for evaluation
    (9, (64, 80), [(30, 20, 40, 40, 1, False)]),
]
SOURCE_DIR = {}


class TinyCocoLike(tfds.core.GeneratorBasedBuilder):
    """Five JPEG scenes with the feature layout of tfds coco/2017."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent     # a test module is not a package; tfds looks for metadata here

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": tf.int64,
            "objects": tfds.features.Sequence({
                "area": tf.int64, "bbox": tfds.features.BBoxFeature(), "id": tf.int64,
                "is_crowd": tf.bool, "label": tfds.features.ClassLabel(names=NAMES)}),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "validation": self._generate_examples()}

    def _generate_examples(self):
        for image_id, (h, w), objects in SCENES:
            yield image_id, {
                "image": str(SOURCE_DIR["images"] / f"{image_id}.jpg"), "image/filename": f"{image_id}.jpg",
                "image/id": image_id,
                "objects": [{"area": int(bw * bh), "id": k, "is_crowd": crowd, "label": label,
                             "bbox": tfds.features.BBox(ymin=y / h, xmin=x / w, ymax=(y + bh) / h, xmax=(x + bw) / w)}
                            for k, (x, y, bw, bh, label, crowd) in enumerate(objects)]}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_twin")
    SOURCE_DIR["images"] = root / "images"
    SOURCE_DIR["images"].mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (h, w), objects in SCENES:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(SOURCE_DIR["images"] / f"{image_id}.jpg")
        images.append(dict(id=image_id, file_name=f"{image_id}.jpg", height=h, width=w))
        for x, y, bw, bh, label, crowd in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=label + 1,
                                    bbox=[x, y, bw, bh], area=bw * bh, iscrowd=int(crowd)))
    (root / "annotations").mkdir()
    with open(root / "annotations" / "all.json", "w") as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=i + 1, name=n) for i, n in enumerate(NAMES)]), f)
    data_dir = str(root / "tfds")
    TinyCocoLike(data_dir=data_dir, file_format="array_record").download_and_prepare()
    tfrecord_dir = str(root / "tfds_default")
    TinyCocoLike(data_dir=tfrecord_dir).download_and_prepare()         # tfds's default file format

    json_config = config_lib.base_config()
    json_config.data.update(source="coco", root=str(root), train_ann="annotations/all.json", train_images="images",
                            val_ann="annotations/all.json", val_images="images", train_short_sizes=(64, 80),
                            max_size=128, test_short_size=64, bucket_divisor=128, batch_size=2, eval_batch_size=2,
                            max_boxes=4, prefetch=1)
    tfds_config = config_lib.base_config()
    tfds_config.data = json_config.data.copy_and_resolve_references()
    tfds_config.data.update(source="tfds", tfds_name="tiny_coco_like", tfds_data_dir=data_dir)
    tfrecord_config = config_lib.base_config()
    tfrecord_config.data = tfds_config.data.copy_and_resolve_references()
    tfrecord_config.data.tfds_data_dir = tfrecord_dir
    return json_config, tfds_config, tfrecord_config


def assert_same_batches(a, b):
    for x, y in zip(a, b):
        for key in ("image", "labels", "box_mask", "image_shape", "image_id", "example_mask"):
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
        np.testing.assert_allclose(x["boxes"], y["boxes"], atol=1e-3)
        np.testing.assert_allclose(x["scale"], y["scale"], rtol=1e-6)


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_info_matches_the_json_twin(configs, file_format):
    json_config, array_record_config, tfrecord_config = configs
    tfds_config = tfrecord_config if file_format == "tfrecord" else array_record_config
    info = pipeline.dataset_info(tfds_config, "train")
    assert info.num_images == 4 and info.ann_file == ""
    assert info.category_names == tuple(NAMES) and info.category_ids == (1, 2, 3)
    assert pipeline.dataset_info(tfds_config, "val").num_images == 5
    records, _ = pipeline.load_split(tfds_config, "train")
    twin, _ = pipeline.load_split(json_config, "train")
    np.testing.assert_array_equal(records.image_ids, twin.image_ids)      # image-id order in both
    for got, want in zip(records.boxes, twin.boxes):
        np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_batches_equal_json_batches_and_resume_exactly(configs, file_format):
    json_config, array_record_config, tfrecord_config = configs
    tfds_config = tfrecord_config if file_format == "tfrecord" else array_record_config
    steps = 4
    fresh = list(itertools.islice(pipeline.train_batches(tfds_config, process_index=0, process_count=1), steps))
    assert_same_batches(fresh, itertools.islice(pipeline.train_batches(json_config, process_index=0,
                                                                       process_count=1), steps))
    resumed = list(itertools.islice(pipeline.train_batches(tfds_config, start_step=3, process_index=0,
                                                           process_count=1), 1))
    assert len(resumed) == 1 and len(fresh) == steps
    assert_same_batches(fresh[3:], resumed)          # step 3 lies in a later epoch than step 0
    assert_same_batches(list(pipeline.eval_batches(tfds_config, process_index=1, process_count=2)),
                        list(pipeline.eval_batches(json_config, process_index=1, process_count=2)))


def test_tfrecord_index_reads_the_records_tfds_reads(configs):
    """Every record read by offset from the TFRecord shards equals the one tfds's ArrayRecord source returns."""
    _, array_record_config, tfrecord_config = configs
    _, by_offset = tfds_source._open_source(tfrecord_config.data, "train")
    _, by_tfds = tfds_source._open_source(array_record_config.data, "train")
    assert isinstance(by_offset, tfds_source.TFRecordSource) and len(by_offset) == len(by_tfds) == len(SCENES)
    for i in range(len(SCENES)):
        a, b = by_offset[i], by_tfds[i]
        assert a["image"] == b["image"] and int(a["image/id"]) == int(b["image/id"])
        np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
        np.testing.assert_array_equal(a["objects"]["label"], b["objects"]["label"])


def test_record_spans_from_a_tensorflow_writer_and_a_truncated_file(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    payloads = [b"", b"a", b"x" * 300]
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    spans = tfds_source.record_spans(path)
    with open(path, "rb") as f:
        data = f.read()
    assert [data[offset:offset + length] for offset, length in spans] == payloads
    with open(path, "wb") as f:
        f.write(data[:-7])
    with pytest.raises(ValueError, match="x.tfrecord ends inside its last record; prepare the set again"):
        tfds_source.record_spans(path)


def test_unprepared_tfds_name_says_what_to_run(configs, tmp_path):
    _, tfds_config, _ = configs
    config = config_lib.base_config()
    config.data = tfds_config.data.copy_and_resolve_references()
    config.data.tfds_data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"tfds build tiny_coco_like --data_dir={tmp_path}"):
        pipeline.dataset_info(config, "train")
