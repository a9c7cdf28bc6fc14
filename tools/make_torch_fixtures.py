"""Write the small PyTorch checkpoints under tests/fixtures/ (needs torch: `pip install torch==2.13.0`; no torchvision).

    python tools/make_torch_fixtures.py [--out tests/fixtures]

Files written (all from torch.manual_seed(0), so re-running reproduces them):
  tensors_zip.pth / tensors_legacy.pth  one mmcv-style checkpoint ({'state_dict', 'meta', 'optimizer'}) with float32,
                                        float16, bfloat16 and int64 tensors, a transposed (strided) tensor, a view at a
                                        storage offset, 0-dim and [1] scalars, nested dicts; zip and pre-1.6 formats
  tensors_expected.npz                  the same state_dict as numpy (bfloat16 widened to float32), the reference
  resnet_torchvision_tiny.pth           a torchvision-named basic-block ResNet (with `fc`) for `fixture_model_config()`,
                                        in the legacy format like torchvision's own ImageNet files
  date_tiny_mmdet.pth                   a whole DATE checkpoint with docs/spec.md §10 names for `fixture_model_config()`

`official_key_shapes(model_config)` spells out docs/spec.md §10's key pattern independently of the Flax model; the
tests use it.
"""
from __future__ import annotations

import argparse
import collections
import os

from date_jax import config as config_lib

STANDARD_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
Shape = tuple[int, ...]


def fixture_model_config() -> config_lib.ConfigDict:
    """The model of the tiny .pth fixtures: `tiny_model_config(1)` narrowed to keep the files a few dozen KB."""
    model = config_lib.tiny_model_config(num_classes=1)
    model.backbone.base_width = 2
    model.neck.out_channels = 8
    model.head.feat_channels = 8
    model.head.stacked_convs = 1
    model.head.num_groups = 2
    return model


def _bn(prefix: str, channels: int) -> dict[str, Shape]:
    return {f"{prefix}.{leaf}": (channels,) for leaf in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def backbone_key_shapes(model: config_lib.ConfigDict, prefix: str = "backbone.") -> dict[str, Shape]:
    """docs/spec.md §10.1: mmdet ResNet keys -> PyTorch shapes (bottleneck for depth 50/101, basic block for 18/34)."""
    width, depth = model.backbone.base_width, model.backbone.depth
    blocks = tuple(model.backbone.stage_blocks) or STANDARD_BLOCKS[depth]
    bottleneck = depth >= 50
    shapes = {f"{prefix}conv1.weight": (width, 3, 7, 7)} | _bn(f"{prefix}bn1", width)
    in_channels = width
    for s, count in enumerate(blocks, start=1):
        planes = width * 2 ** (s - 1)
        out_channels = 4 * planes if bottleneck else planes
        for b in range(count):
            name = f"{prefix}layer{s}.{b}"
            if bottleneck:
                convs = [(planes, in_channels, 1, 1), (planes, planes, 3, 3), (out_channels, planes, 1, 1)]
            else:
                convs = [(planes, in_channels, 3, 3), (planes, planes, 3, 3)]
            for k, shape in enumerate(convs, start=1):
                shapes[f"{name}.conv{k}.weight"] = shape
                shapes |= _bn(f"{name}.bn{k}", shape[0])
            if b == 0 and (in_channels != out_channels or s > 1):
                shapes[f"{name}.downsample.0.weight"] = (out_channels, in_channels, 1, 1)
                shapes |= _bn(f"{name}.downsample.1", out_channels)
            in_channels = out_channels
    return shapes


def official_key_shapes(model: config_lib.ConfigDict) -> dict[str, Shape]:
    """docs/spec.md §10: every key of an mmdet DATE state_dict for `model` (a `config.model`) -> its PyTorch shape."""
    shapes = backbone_key_shapes(model)
    width = model.backbone.base_width
    expansion = 4 if model.backbone.depth >= 50 else 1
    neck, feat, classes = model.neck.out_channels, model.head.feat_channels, model.num_classes
    for i, c in enumerate([width * 2 ** s * expansion for s in (1, 2, 3)]):
        shapes |= {f"neck.lateral_convs.{i}.conv.weight": (neck, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (neck,)}
    for i in range(5):
        shapes |= {f"neck.fpn_convs.{i}.conv.weight": (neck, neck, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (neck,)}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(model.head.stacked_convs):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (feat, neck if i == 0 else feat, 3, 3)
            shapes |= {f"bbox_head.{tower}.{i}.gn.weight": (feat,), f"bbox_head.{tower}.{i}.gn.bias": (feat,)}
    shapes |= {f"bbox_head.scales.{level}.scale": () for level in range(len(model.strides))}

    def conv(name: str, out: int) -> dict[str, Shape]:
        return {f"{name}.weight": (out, feat, 3, 3), f"{name}.bias": (out,)}

    if model.o2o != "none":
        shapes |= conv("bbox_head.predictors.0.conv_cls", classes) | conv("bbox_head.predictors.0.conv_reg", 4)
    if model.o2o == "3dmf":
        shapes |= conv("bbox_head.predictors.0.max3d.conv", feat) | conv("bbox_head.predictors.0.filter", 1)
        shapes |= {f"bbox_head.predictors.0.max3d.norm.{leaf}": (feat,) for leaf in ("weight", "bias")}
    anchors = len(model.anchors.ratios) * model.anchors.scales_per_octave
    if model.o2m == "fcos":
        shapes |= conv("bbox_head.predictors.1.conv_cls", classes) | conv("bbox_head.predictors.1.conv_reg", 4)
        shapes |= conv("bbox_head.predictors.1.conv_ctr", 1)
    elif model.o2m == "retina":
        shapes |= conv("bbox_head.predictors.1.conv_cls", anchors * classes)
        shapes |= conv("bbox_head.predictors.1.conv_reg", anchors * 4)
    return shapes


def _random_state_dict(torch, shapes: dict[str, Shape]) -> collections.OrderedDict:
    """Random tensors for `shapes`: positive running variances, int64 `num_batches_tracked`."""
    state = collections.OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape)
    return state


def _tensor_checkpoint(torch, np) -> dict:
    """The mmcv-like checkpoint of tensors_{zip,legacy}.pth (numpy scalars and bytes in `meta`, as mmcv hooks leave)."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    state = collections.OrderedDict()
    state["conv.weight"] = torch.randn(5, 3, 3, 3)
    state["transposed"] = base.t()                          # stride (1, 6)
    state["view_at_offset"] = base[1:3, 2:5]                # storage offset 8, shares `base`'s storage
    state["half"] = torch.randn(3, 4).half()
    state["bfloat"] = torch.randn(2, 5).to(torch.bfloat16)
    state["bn.num_batches_tracked"] = torch.tensor(123456789012, dtype=torch.int64)
    state["long_vector"] = torch.tensor([-3, 0, 2 ** 40], dtype=torch.int64)
    state["scale_0d"] = torch.tensor(1.25)
    state["scale_1d"] = torch.tensor([0.75])
    state["empty"] = torch.zeros(0, 3)
    state["nested"] = {"inner.weight": torch.randn(2, 2), "deeper": {"bias": torch.randn(3).double()}}
    meta = {"mmcv_version": "1.7.0", "epoch": 12, "CLASSES": ("person",), "config": "model = dict(type='FCOS')",
            "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth", "best_score": np.float64(0.373)},
            "seed": np.int64(42), "raw": b"\x00\xff"}
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(5, 3, 3, 3)}},
                 "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "params": [0]}]}
    return {"meta": meta, "state_dict": state, "optimizer": optimizer}


def _expected_arrays(torch, state: dict, prefix: str = "") -> dict:
    """Flattened numpy copies of the tensors in `state` (bfloat16 widened to float32, exactly)."""
    arrays = {}
    for key, value in state.items():
        if isinstance(value, dict):
            arrays |= _expected_arrays(torch, value, f"{prefix}{key}.")
        else:
            arrays[f"{prefix}{key}"] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return arrays


def main() -> None:
    """Write every fixture into --out."""
    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures"))
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    checkpoint = _tensor_checkpoint(torch, np)
    torch.save(checkpoint, os.path.join(out, "tensors_zip.pth"))
    torch.save(checkpoint, os.path.join(out, "tensors_legacy.pth"), _use_new_zipfile_serialization=False)
    np.savez(os.path.join(out, "tensors_expected.npz"), **_expected_arrays(torch, checkpoint["state_dict"]))

    model = fixture_model_config()
    backbone = _random_state_dict(torch, backbone_key_shapes(model, prefix=""))
    backbone["fc.weight"] = torch.randn(10, model.backbone.base_width * 8)
    backbone["fc.bias"] = torch.randn(10)
    torch.save(backbone, os.path.join(out, "resnet_torchvision_tiny.pth"), _use_new_zipfile_serialization=False)

    date = _random_state_dict(torch, official_key_shapes(model))
    torch.save({"meta": {"epoch": 12, "CLASSES": ("person",)}, "state_dict": date},
               os.path.join(out, "date_tiny_mmdet.pth"))
    for name in sorted(os.listdir(out)):
        print(f"{os.path.join(out, name)}: {os.path.getsize(os.path.join(out, name))} bytes")


if __name__ == "__main__":
    main()
