"""Parameter shapes and counts of the released DATE models against the mmdet state_dict of docs/spec.md §10.

The expected state_dict is written out here from docs/spec.md's key list and module definitions; the Flax variables are
mapped to it with the mechanical rule documented in `date_jax/models/detector.py` (a converter relies on it).
"""
import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from date_jax import config as config_lib
from date_jax.models import detector


def _bn(prefix, channels):
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}


def mmdet_state_dict_shapes(depth, num_classes, o2o, o2m):
    """docs/spec.md §10 keys -> PyTorch shapes (num_batches_tracked left out: it is not a tensor of the model)."""
    shapes = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    inplanes = 64
    for s, blocks in enumerate({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth], start=1):
        planes = 64 * 2 ** (s - 1)
        for b in range(blocks):
            p = f"backbone.layer{s}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            shapes.update(_bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", 4 * planes))
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", 4 * planes))
            inplanes = 4 * planes
    for i, cin in enumerate((512, 1024, 2048)):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (256, cin, 1, 1)
        shapes[f"neck.lateral_convs.{i}.conv.bias"] = (256,)
    for i in range(5):
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        shapes[f"neck.fpn_convs.{i}.conv.bias"] = (256,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (256, 256, 3, 3)
            shapes[f"bbox_head.{tower}.{i}.gn.weight"] = (256,)
            shapes[f"bbox_head.{tower}.{i}.gn.bias"] = (256,)
    for i in range(5):
        shapes[f"bbox_head.scales.{i}.scale"] = ()

    def conv(name, out_channels, in_channels=256):
        shapes[f"bbox_head.predictors.{name}.weight"] = (out_channels, in_channels, 3, 3)
        shapes[f"bbox_head.predictors.{name}.bias"] = (out_channels,)

    conv("0.conv_cls", num_classes)
    conv("0.conv_reg", 4)
    if o2o == "3dmf":
        conv("0.max3d.conv", 256)
        shapes["bbox_head.predictors.0.max3d.norm.weight"] = (256,)
        shapes["bbox_head.predictors.0.max3d.norm.bias"] = (256,)
        conv("0.filter", 1)
    if o2m == "fcos":
        conv("1.conv_cls", num_classes)
        conv("1.conv_reg", 4)
        conv("1.conv_ctr", 1)
    else:
        conv("1.conv_cls", 9 * num_classes)
        conv("1.conv_reg", 36)
    return shapes


BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def flax_to_mmdet_shapes(variables):
    """Apply the detector module's documented name rule to every variable -> {mmdet key: PyTorch shape}."""
    out = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(variables[collection]).items():
            *modules, name = path
            key = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
            shape = tuple(leaf.shape)
            if collection == "batch_stats":
                name = BN_LEAVES[name]
            elif name == "kernel":
                name, shape = "weight", (shape[3], shape[2], shape[0], shape[1])
            elif name == "scale" and not modules[-1].startswith("scales_"):
                name = "weight"
            out[f"{key}.{name}"] = shape
    return out


def released_model(depth, o2o, o2m, num_classes=80):
    config = config_lib.base_config()
    config.model.backbone.depth = depth
    config.model.o2o = o2o
    config.model.o2m = o2m
    config.model.num_classes = num_classes
    model = detector.build_model(config)
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.uint8))


@pytest.mark.parametrize("name,depth,o2o,o2m,num_classes", [
    ("DATE-R50-F", 50, "point", "fcos", 80),
    ("DATE-R50-R", 50, "point", "retina", 80),
    ("DATE-R50-F-3DMF", 50, "3dmf", "fcos", 80),
    ("DATE-R101-F", 101, "point", "fcos", 80),
    ("DATE-R50-R CrowdHuman", 50, "point", "retina", 1),
])
def test_parameter_count_and_names_match_the_mmdet_state_dict(name, depth, o2o, o2m, num_classes):
    variables = released_model(depth, o2o, o2m, num_classes)
    expected = mmdet_state_dict_shapes(depth, num_classes, o2o, o2m)
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables))
    assert count == sum(math.prod(shape) for shape in expected.values()), name
    got = flax_to_mmdet_shapes(variables)
    assert sorted(set(got) ^ set(expected)) == [], name
    assert {k: v for k, v in got.items() if expected[k] != v} == {}, name


def test_hand_counted_r50_f_total():
    # torchvision ResNet-50 has 25,557,032 parameters: 2,049,000 in fc and 53,120 BN affine (26,560 channels x 2).
    variables = released_model(50, "point", "fcos")
    backbone = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]["backbone"]))
    bn = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["batch_stats"]["backbone"]))
    assert backbone == 25_557_032 - 2_049_000 - 53_120      # conv weights only: BN lives in batch_stats
    assert bn == 4 * 26_560                                 # weight, bias, running mean, running var
