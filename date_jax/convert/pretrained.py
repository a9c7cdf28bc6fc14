"""Start training from PyTorch weights: `config.init_from.backbone` (an ImageNet ResNet) and
`config.init_from.checkpoint` (a whole mmdet DATE checkpoint), applied to freshly initialised variables.

Either may be a path or a name (`open-mmlab://detectron/resnet50_caffe`, `torchvision://resnet50`, a URL), which is
downloaded once into the cache and hash-checked (`date_jax.convert.download`). Both load through the safe reader
(`torch_pickle.load`) and the SPEC §10 name map (`mmdet.match_state_dict`); every
loaded, missing and unused key is reported in the log, and variables the file does not provide keep their fresh values.
A shape mismatch, or a file of which nothing fits, stops with an error naming the keys.
"""
from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging
from flax import traverse_util

from date_jax.convert import download, mmdet, torch_pickle, torchvision

PyTree = Any


def _merge(variables: dict[str, PyTree], found: dict[tuple[str, ...], Any]) -> dict[str, PyTree]:
    """`variables` with the leaves named in `found` ({(collection, *path): array}) replaced."""
    flat = traverse_util.flatten_dict(variables)
    flat.update(found)
    return traverse_util.unflatten_dict(flat)


def _describe(config: ml_collections.ConfigDict) -> str:
    """The config values that decide the variable shapes, for error messages."""
    m = config.model
    return (f"backbone depth={m.backbone.depth} style={m.backbone.style!r} base_width={m.backbone.base_width}, "
            f"num_classes={m.num_classes}, o2o={m.o2o!r}, o2m={m.o2m!r}")


def _load_into(path: str, state_dict: dict, template: dict[str, PyTree], variables: dict[str, PyTree], what: str,
               config: ml_collections.ConfigDict) -> dict[str, PyTree]:
    """Match `state_dict` against `template` (a subtree of `variables`), log the report and merge."""
    found, report = mmdet.match_state_dict(state_dict, template)
    if report.mismatched or not report.loaded:
        raise mmdet.ConversionError(f"{path} does not fit the {what} of this config ({_describe(config)}); check "
                                    f"config.init_from and config.model.\n{report}")
    log = logging.info if report.complete else logging.warning
    log("Initialised the %s from %s: %s", what, path, report)
    return _merge(variables, found)


def load_backbone(path: str, config: ml_collections.ConfigDict, variables: dict[str, PyTree]) -> dict[str, PyTree]:
    """`variables` with the backbone taken from an ImageNet ResNet .pth (open-mmlab caffe or torchvision naming)."""
    state_dict = torch_pickle.load(path)
    style = config.model.backbone.style
    if torchvision.is_torchvision_classifier(state_dict) and style == "caffe":
        raise ValueError(
            f"{path} is a torchvision ResNet (it has an 'fc' classifier): it was trained with the stride on the 3x3 "
            "conv and RGB/std inputs. Set config.model.backbone.style='pytorch' to use it, or use the Detectron caffe "
            "weights (open-mmlab://detectron/resnet50_caffe) with style 'caffe'.")
    if style == "pytorch" and torchvision.looks_like_caffe(state_dict):
        logging.warning("%s looks like a Detectron caffe ResNet (all BN means 0, variances 1) but "
                        "config.model.backbone.style='pytorch'; caffe weights expect style 'caffe'.", path)
    template = {collection: {"backbone": tree["backbone"]} for collection, tree in variables.items()
                if "backbone" in tree}
    return _load_into(path, torchvision.backbone_state_dict(state_dict), template, variables, "backbone", config)


def load_checkpoint(path: str, config: ml_collections.ConfigDict, variables: dict[str, PyTree]) -> dict[str, PyTree]:
    """`variables` with every tensor of a whole mmdet DATE checkpoint (SPEC §10 names) that fits the model."""
    return _load_into(path, torch_pickle.load(path), variables, variables, "model", config)


def resolve(key: str, value: str) -> str:
    """Local path for `config.init_from.<key>`: a downloaded (cached) file for a weights name or URL, else `value`."""
    if download.is_remote(value):
        return download.fetch(value)
    if not os.path.isfile(value):
        raise FileNotFoundError(f"config.init_from.{key}={value!r} does not exist; download the .pth file, name "
                                f"published weights (e.g. {next(iter(download.MODEL_ZOO))}) or clear the key "
                                f"(--config.init_from.{key}='').")
    return value


def apply_init_from(config: ml_collections.ConfigDict, variables: dict[str, PyTree]) -> dict[str, PyTree]:
    """Fresh {'params', 'batch_stats'} -> the same tree with `config.init_from.backbone`, then
    `config.init_from.checkpoint`, loaded into it (each only when set; empty strings leave `variables` as they are)."""
    paths = {key: resolve(key, value) for key, value in (("backbone", config.init_from.backbone),
                                                          ("checkpoint", config.init_from.checkpoint)) if value}
    if "backbone" in paths:
        variables = load_backbone(paths["backbone"], config, variables)
    if "checkpoint" in paths:
        variables = load_checkpoint(paths["checkpoint"], config, variables)
    return variables
