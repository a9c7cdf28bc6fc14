"""docs/spec.md §10 state dicts -> Flax variables for every model variant; backbone / checkpoint initialisation; the
CLI."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from date_jax import config as config_lib
from date_jax.convert import mmdet, pretrained, torch_pickle
from date_jax.models import detector
from tools.make_torch_fixtures import backbone_key_shapes, fixture_model_config, official_key_shapes

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(num_classes=3, o2o="point", o2m="fcos", depth=18, style="caffe"):
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes, o2o, o2m)
    config.model.backbone.depth = depth
    config.model.backbone.style = style
    if depth >= 50:     # the standard block counts, so the keys are exactly the released ones; narrow widths
        config.model.backbone.stage_blocks = ()
        config.model.backbone.base_width = 4
    return config


VARIANTS = {
    "R50-F": _config(80, "point", "fcos", depth=50),
    "R50-R": _config(80, "point", "retina", depth=50),
    "R50-F-3DMF": _config(80, "3dmf", "fcos", depth=50),
    "R101-F-pytorch": _config(80, "point", "fcos", depth=101, style="pytorch"),
    "CrowdHuman-F": _config(1, "point", "fcos"),
    "CrowdHuman-R": _config(1, "point", "retina"),
    "o2o-only": _config(3, "point", "none"),
}


def _random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (np.array(7, np.int64) if k.endswith("num_batches_tracked") else
                rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_official_keys_convert_to_exactly_the_model_tree(name):
    config = VARIANTS[name]
    state_dict = _random_state_dict(official_key_shapes(config.model))
    variables = mmdet.state_dict_to_variables(state_dict, config)          # strict: no missing, no unused
    template = detector.abstract_variables(config)
    got = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    want = {k: v.shape for k, v in traverse_util.flatten_dict(template).items()}
    assert got == want
    assert all(v.dtype == np.float32 for v in traverse_util.flatten_dict(variables).values())

    params, stats = variables["params"], variables["batch_stats"]
    # Convolutions: OIHW -> HWIO, checked element-wise by hand: kernel[ky, kx, i, o] == weight[o, i, ky, kx].
    w = state_dict["backbone.conv1.weight"]
    assert params["backbone"]["conv1"]["kernel"][6, 1, 2, 3] == w[3, 2, 6, 1]
    w = state_dict["bbox_head.predictors.0.conv_cls.weight"]
    k = params["bbox_head"]["predictors_0"]["conv_cls"]["kernel"]
    assert k.shape == (3, 3, w.shape[1], w.shape[0])
    assert k[0, 2, 5, w.shape[0] - 1] == w[w.shape[0] - 1, 5, 0, 2]
    np.testing.assert_array_equal(params["neck"]["fpn_convs_3"]["conv"]["kernel"],
                                  state_dict["neck.fpn_convs.3.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["neck"]["lateral_convs_2"]["conv"]["bias"],
                                  state_dict["neck.lateral_convs.2.conv.bias"])
    # Frozen BN: affine and running statistics, all in batch_stats.
    bn = stats["backbone"]["layer2_0"]["downsample_1"]
    for leaf, key in [("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")]:
        np.testing.assert_array_equal(bn[leaf], state_dict[f"backbone.layer2.0.downsample.1.{key}"])
    np.testing.assert_array_equal(params["backbone"]["layer2_0"]["downsample_0"]["kernel"][0, 0],
                                  state_dict["backbone.layer2.0.downsample.0.weight"][:, :, 0, 0].T)
    # GroupNorm and the 0-dim Scales.
    np.testing.assert_array_equal(params["bbox_head"]["reg_convs_1"]["gn"]["scale"],
                                  state_dict["bbox_head.reg_convs.1.gn.weight"])
    assert params["bbox_head"]["scales_4"]["scale"].shape == ()
    assert params["bbox_head"]["scales_4"]["scale"] == state_dict["bbox_head.scales.4.scale"]
    if config.model.o2o == "3dmf":
        np.testing.assert_array_equal(params["bbox_head"]["predictors_0"]["max3d"]["norm"]["bias"],
                                      state_dict["bbox_head.predictors.0.max3d.norm.bias"])
        assert params["bbox_head"]["predictors_0"]["filter"]["kernel"][1, 0, 4, 0] == \
            state_dict["bbox_head.predictors.0.filter.weight"][0, 4, 1, 0]
    if config.model.o2m == "retina":
        assert params["bbox_head"]["predictors_1"]["conv_cls"]["kernel"].shape[-1] == 9 * config.model.num_classes
        np.testing.assert_array_equal(params["bbox_head"]["predictors_1"]["conv_reg"]["bias"],
                                      state_dict["bbox_head.predictors.1.conv_reg.bias"])


def test_module_names():
    assert mmdet.torch_module_name(("backbone", "layer3_12", "downsample_1")) == "backbone.layer3.12.downsample.1"
    assert mmdet.torch_module_name(("bbox_head", "predictors_0", "conv_cls")) == "bbox_head.predictors.0.conv_cls"
    assert mmdet.torch_key("batch_stats", ("backbone", "bn1", "var"), 1) == "backbone.bn1.running_var"
    assert mmdet.torch_key("params", ("bbox_head", "scales_2", "scale"), 0) == "bbox_head.scales.2.scale"
    assert (mmdet.torch_key("params", ("bbox_head", "cls_convs_0", "gn", "scale"), 1)
            == "bbox_head.cls_convs.0.gn.weight")


def test_scales_stored_with_shape_one_are_accepted():
    config = VARIANTS["CrowdHuman-F"]
    state_dict = _random_state_dict(official_key_shapes(config.model))
    state_dict["bbox_head.scales.2.scale"] = np.array([1.5], np.float32)
    variables = mmdet.state_dict_to_variables(state_dict, config)
    assert variables["params"]["bbox_head"]["scales_2"]["scale"].shape == ()
    assert float(variables["params"]["bbox_head"]["scales_2"]["scale"]) == 1.5


def test_missing_unused_and_mismatched_keys_are_all_reported():
    config = VARIANTS["CrowdHuman-F"]
    state_dict = _random_state_dict(official_key_shapes(config.model))
    del state_dict["backbone.layer3.0.bn2.running_var"]
    del state_dict["bbox_head.predictors.1.conv_ctr.bias"]
    state_dict["bbox_head.fcos_head.extra.weight"] = np.zeros(3, np.float32)
    state_dict["bbox_head.predictors.0.conv_cls.weight"] = np.zeros((80, 16, 3, 3), np.float32)
    with pytest.raises(mmdet.ConversionError) as error:
        mmdet.state_dict_to_variables(state_dict, config)
    message = str(error.value)
    for key in ["backbone.layer3.0.bn2.running_var", "bbox_head.predictors.1.conv_ctr.bias",
                "bbox_head.fcos_head.extra.weight",
                "bbox_head.predictors.0.conv_cls.weight: checkpoint [80, 16, 3, 3] vs model [1, 16, 3, 3]"]:
        assert key in message
    assert "num_batches_tracked" not in message


def test_non_strict_returns_what_fits_and_still_refuses_wrong_shapes():
    config = VARIANTS["CrowdHuman-F"]
    state_dict = _random_state_dict(official_key_shapes(config.model))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("bbox_head.predictors.1.")}
    variables = mmdet.state_dict_to_variables(state_dict, config, strict=False)
    assert "predictors_1" not in variables["params"]["bbox_head"]
    assert "predictors_0" in variables["params"]["bbox_head"]
    state_dict["neck.fpn_convs.0.conv.bias"] = np.zeros(5, np.float32)
    with pytest.raises(mmdet.ConversionError, match="neck.fpn_convs.0.conv.bias"):
        mmdet.state_dict_to_variables(state_dict, config, strict=False)


def _fresh(config):
    """Stand-in for freshly initialised variables: random arrays shaped like the model's (no compile needed)."""
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), detector.abstract_variables(config))


@pytest.fixture(scope="module")
def fixture_config():
    config = config_lib.base_config()
    config.model = fixture_model_config()
    config.init_from.backbone = ""   # the base config points at the caffe ResNet-50 file, absent here
    return config


def test_torchvision_backbone_initialises_only_the_backbone(fixture_config):
    config = fixture_config.copy_and_resolve_references()
    config.model.backbone.style = "pytorch"
    config.init_from.backbone = os.path.join(FIXTURES, "resnet_torchvision_tiny.pth")
    fresh = _fresh(config)
    loaded = pretrained.apply_init_from(config, fresh)
    state_dict = torch_pickle.load(config.init_from.backbone)
    assert set(backbone_key_shapes(config.model, prefix="")) - set(state_dict) == set()
    np.testing.assert_array_equal(loaded["params"]["backbone"]["layer4_0"]["conv2"]["kernel"],
                                  state_dict["layer4.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["bn1"]["mean"], state_dict["bn1.running_mean"])
    for part in ("neck", "bbox_head"):
        jax.tree.map(np.testing.assert_array_equal, loaded["params"][part], fresh["params"][part])
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)


def test_torchvision_backbone_with_caffe_style_is_refused(fixture_config):
    config = fixture_config.copy_and_resolve_references()
    config.init_from.backbone = os.path.join(FIXTURES, "resnet_torchvision_tiny.pth")
    with pytest.raises(ValueError, match="style='pytorch'"):
        pretrained.apply_init_from(config, _fresh(config))


def test_whole_checkpoint_initialises_every_variable(fixture_config):
    config = fixture_config.copy_and_resolve_references()
    config.init_from.checkpoint = os.path.join(FIXTURES, "date_tiny_mmdet.pth")
    fresh = _fresh(config)
    loaded = pretrained.apply_init_from(config, fresh)
    expected = mmdet.state_dict_to_variables(torch_pickle.load(config.init_from.checkpoint), config)
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_init_from_errors_and_no_op(fixture_config, tmp_path):
    config = fixture_config.copy_and_resolve_references()
    fresh = _fresh(config)
    assert pretrained.apply_init_from(config, fresh) is fresh
    config.init_from.checkpoint = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="init_from.checkpoint"):
        pretrained.apply_init_from(config, fresh)
    config.init_from.checkpoint = os.path.join(FIXTURES, "tensors_zip.pth")     # nothing in it fits the model
    with pytest.raises(mmdet.ConversionError, match="does not fit"):
        pretrained.apply_init_from(config, fresh)


@pytest.mark.slow
def test_convert_checkpoint_cli_writes_a_restorable_workdir(fixture_config, tmp_path):
    from date_jax import checkpoints
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "from date_jax import config as config_lib\n"
        "from tools.make_torch_fixtures import fixture_model_config\n\n"
        "def get_config():\n"
        "    config = config_lib.base_config()\n"
        "    config.model = fixture_model_config()\n"
        "    return config\n")
    pth = os.path.join(FIXTURES, "date_tiny_mmdet.pth")
    workdir = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_checkpoint.py"),
                             f"--config={config_file}", f"--pth={pth}", f"--workdir={workdir}", "--step=7"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    step, variables = checkpoints.restore_variables(str(workdir))
    assert step == 7
    expected = mmdet.state_dict_to_variables(torch_pickle.load(pth), fixture_config)
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    assert checkpoints.load_config(str(workdir)).model.neck.out_channels == fixture_config.model.neck.out_channels

    bad = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_checkpoint.py"),
                          f"--config={config_file}", f"--pth={os.path.join(FIXTURES, 'tensors_zip.pth')}",
                          f"--workdir={tmp_path / 'bad'}"], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert bad.returncode != 0 and "missing from the checkpoint" in bad.stderr
