"""The Python API stands alone: `Detector.from_workdir` reads only the workdir (never the data set) and writes
nothing; `predict` takes one image or a list (run in batches), a score threshold, and returns names and the original
category ids."""
import os

import numpy as np
import pytest

from date_jax import checkpoints
from date_jax import config as config_lib
from date_jax.inference import Detector
from tests.helpers import random_variables


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes=3)
    config.data.update(source="coco", root=str(root / "no_such_data"), test_short_size=64, max_size=96,
                       bucket_divisor=32)
    work = str(root / "run")
    checkpoints.save_variables(work, 5, random_variables(config), config)
    checkpoints.save_classes(work, ["cat", "dog", "emu"], [17, 18, 42])
    return work


def _listing(path):
    return sorted((p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, files in os.walk(path) for p in files)


def test_from_workdir_reads_the_workdir_only_and_writes_nothing(workdir):
    before = _listing(workdir)
    model = Detector.from_workdir(workdir)      # the config's data root does not exist: it is never read
    assert model.category_names == ["cat", "dog", "emu"] and model.category_ids == [17, 18, 42]
    assert _listing(workdir) == before


def test_predict_one_image_or_a_list_with_names_and_category_ids(workdir):
    model = Detector.from_workdir(workdir)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8),
              rng.integers(0, 256, (58, 77, 3), dtype=np.uint8)]
    one = model.predict(images[0])
    assert isinstance(one, dict) and len(one["scores"]) > 0
    many = model.predict(images, batch_size=2)
    assert isinstance(many, list) and len(many) == 3
    np.testing.assert_allclose(many[0]["scores"], one["scores"], rtol=1e-5)
    np.testing.assert_allclose(many[0]["boxes"], one["boxes"], atol=1e-3)
    for image, result in zip(images, many):
        ids = {0: 17, 1: 18, 2: 42}
        assert list(result["category_ids"]) == [ids[int(c)] for c in result["labels"]]
        assert result["names"] == [["cat", "dog", "emu"][int(c)] for c in result["labels"]]
        assert np.all(np.diff(result["scores"]) <= 0)                      # best first
        assert result["boxes"][:, 2].max() <= image.shape[1] and result["boxes"][:, 3].max() <= image.shape[0]
    threshold = float(np.median(one["scores"]))
    above = model.predict(images[0], score_thr=threshold)
    assert len(above["scores"]) == int((one["scores"] >= threshold).sum()) and above["scores"].min() >= threshold
