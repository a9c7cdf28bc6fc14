"""torchvision / open-mmlab ImageNet ResNets -> the mmdet backbone names of date-jax's ResNet.

torchvision's ResNet and the open-mmlab conversions of the Detectron caffe ResNets (`resnet50_caffe-788b5fa3.pth`,
`resnet101_caffe-3ad79236.pth`) share mmdet's backbone naming without the `backbone.` prefix: `conv1`, `bn1`,
`layer{s}.{b}.conv{k}`, `layer{s}.{b}.bn{k}`, `layer{s}.0.downsample.{0,1}`. torchvision adds the classifier `fc.*`,
which a detector does not use. The two differ in where a bottleneck strides (torchvision: `pytorch` style, on conv2;
Detectron: `caffe` style, on conv1) and in the input they expect (RGB / std vs BGR minus mean), which the weights'
shapes cannot tell apart: `config.model.backbone.style` must say which one the file is.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

BACKBONE_PREFIX = "backbone."
CLASSIFIER_PREFIX = "fc."


def is_torchvision_classifier(state_dict: Mapping[str, np.ndarray]) -> bool:
    """True for a torchvision ImageNet ResNet (it carries the `fc` classifier the caffe conversions lack)."""
    return f"{CLASSIFIER_PREFIX}weight" in state_dict


def looks_like_caffe(state_dict: Mapping[str, np.ndarray]) -> bool:
    """True when every BN holds mean 0 / var 1, as in the open-mmlab conversions of the Detectron caffe ResNets."""
    means = [v for k, v in state_dict.items() if k.endswith("running_mean")]
    variances = [v for k, v in state_dict.items() if k.endswith("running_var")]
    return bool(means) and all(np.all(m == 0) for m in means) and all(np.all(v == 1) for v in variances)


def backbone_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ImageNet ResNet names -> mmdet detector names (`conv1.weight` -> `backbone.conv1.weight`); `fc.*` is dropped.

    A state dict that already uses the `backbone.` prefix (a whole detector) contributes only its backbone tensors.
    """
    if any(k.startswith(BACKBONE_PREFIX) for k in state_dict):
        return {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    return {BACKBONE_PREFIX + k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIX)}
