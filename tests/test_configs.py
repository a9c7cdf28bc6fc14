"""Every config in configs/ builds its model and optimizer (shape only), and bad overrides fail with valid keys."""
import glob
import os
import subprocess
import sys

import jax
import pytest

from date_jax import cli
from date_jax.models import detector
from date_jax.train import optimizer
from date_jax.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))


def test_every_seed_table_row_has_a_config():
    names = {os.path.basename(p)[:-3] for p in CONFIGS}
    assert {"date_r50_fcos_1x_coco", "date_r50_retina_1x_coco", "date_r50_fcos_3x_coco", "date_r101_fcos_3x_coco",
            "date_r50_fcos_3dmf_1x_coco", "date_r50_fcos_3dmf_3x_coco", "date_r50_fcos_crowdhuman",
            "date_r50_retina_crowdhuman", "poto_r50_1x_coco", "fcos_r50_1x_coco", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_builds_model_and_optimizer_shapes(path):
    config = cli.load_config_file(path)
    if config.model.num_classes == 0:       # read from the training annotation file at start-up (coco_format.py)
        config.model.num_classes = 5
    doc = open(path).read()
    assert "Run:" in doc and "python train.py --config configs/" in doc, "docstring must give the run command"
    model = detector.build_model(config)
    variables = jax.eval_shape(lambda: detector.init_variables(model, jax.random.PRNGKey(0), (256, 256)))
    tx = optimizer.make_optimizer(config, variables["params"], 1000).tx
    state = jax.eval_shape(lambda v: step_lib.create_state(v, tx), variables)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    assert n_params > 0
    if config.model.backbone.depth == 101 and config.model.backbone.base_width == 64:
        r50 = cli.load_config_file(os.path.join(ROOT, "configs", "date_r50_fcos_3x_coco.py"))
        r50_vars = jax.eval_shape(lambda: detector.init_variables(detector.build_model(r50), jax.random.PRNGKey(0),
                                                                  (256, 256)))
        assert n_params > sum(x.size for x in jax.tree.leaves(r50_vars["params"]))


def test_unknown_override_lists_valid_keys():
    config = cli.load_config_file(os.path.join(ROOT, "configs", "date_r50_fcos_1x_coco.py"))
    assert cli.unknown_override(config, ["--config.model.o2m=retina", "--config.data.batch_size=8"]) is None
    message = cli.unknown_override(config, ["--config.model.backbone.dept=101"])
    assert "'model.backbone.dept'" in message and "depth" in message and "frozen_stages" in message


def test_train_py_rejects_unknown_key_with_valid_keys():
    result = subprocess.run([sys.executable, "train.py", "--config", "configs/date_r50_fcos_1x_coco.py",
                             "--workdir", "/tmp/unused", "--config.optim.lr=0.1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Unknown config key 'optim.lr'" in result.stderr and "base_lr" in result.stderr


def test_reference_evaluation_changes_only_dtype_padding_and_batch():
    from flax import traverse_util

    from date_jax import config as config_lib

    for name in ("date_r50_fcos_1x_coco.py", "date_r50_retina_crowdhuman.py"):
        config = cli.load_config_file(os.path.join(ROOT, "configs", name))
        before = traverse_util.flatten_dict(config.to_dict())
        after = traverse_util.flatten_dict(config_lib.reference_evaluation(config).to_dict())
        reference = {("dtype",): "float32", ("data", "bucket_divisor"): 32, ("data", "eval_batch_size"): 1}
        assert set(after) == set(before)
        assert {k for k in before if before[k] != after[k]} <= set(reference)
        assert {k: after[k] for k in reference} == reference
        assert before[("data", "bucket_divisor")] != 32 and before[("data", "eval_batch_size")] != 1
