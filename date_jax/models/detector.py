"""The DATE detector: uint8 images -> normalisation -> ResNet -> FPN -> DATE head -> network-output dict
(docs/design.md §2).

`build_model(config)` reads `config.model` and `config.dtype`; params are float32, computation runs in `config.dtype`,
outputs are float32. Variables: `params` (trainable) and `batch_stats` (frozen BatchNorm: scale, bias, mean, var).

Name mapping to the mmdet state_dict (docs/spec.md §10), mechanical: split the Flax path at '/', turn every `name_k`
list
element into `name.k`, join with '.', and map the leaf:
  conv `kernel` [kh,kw,in,out]  <- `weight` [out,in,kh,kw] transposed (2, 3, 1, 0);  conv `bias` <- `bias`
  GroupNorm `scale`/`bias`      <- `weight`/`bias`   (cls_convs_i/gn, reg_convs_i/gn, predictors_0/max3d/norm)
  Scale `scale` []              <- `scale` ([] or [1])
  frozen BN (in `batch_stats`)  `scale`, `bias`, `mean`, `var` <- `weight`, `bias`, `running_mean`, `running_var`
                                 (`num_batches_tracked` is dropped)
Examples (Flax path -> mmdet key prefix):
  backbone/conv1, backbone/bn1                    -> backbone.conv1, backbone.bn1
  backbone/layer1_0/conv2, backbone/layer3_5/bn3  -> backbone.layer1.0.conv2, backbone.layer3.5.bn3
  backbone/layer2_0/downsample_0 | downsample_1   -> backbone.layer2.0.downsample.0 | .downsample.1
  neck/lateral_convs_0/conv, neck/fpn_convs_4/conv -> neck.lateral_convs.0.conv, neck.fpn_convs.4.conv
  bbox_head/cls_convs_0/conv, bbox_head/cls_convs_0/gn -> bbox_head.cls_convs.0.conv, bbox_head.cls_convs.0.gn
  bbox_head/scales_3/scale                        -> bbox_head.scales.3.scale
  bbox_head/predictors_0/conv_cls | conv_reg | filter | max3d/conv | max3d/norm
                                                  -> bbox_head.predictors.0.conv_cls | ... | .max3d.norm
  bbox_head/predictors_1/conv_cls | conv_reg | conv_ctr -> bbox_head.predictors.1.conv_cls | ...
`predictors_1` is always the one-to-many branch, also when o2o is 'none'.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from jax import lax

from date_jax import priors
from date_jax.models.fpn import FPN
from date_jax.models.head import DATEHead
from date_jax.models.layers import ConvOp
from date_jax.models.resnet import STYLES, ResNet

Array = jax.Array
Dtype = Any
PyTree = Any

# Caffe (Detectron) weights expect BGR minus the mean, std 1; torchvision weights expect RGB mean/std.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)
PYTORCH_RGB_MEAN = (123.675, 116.28, 103.53)
PYTORCH_RGB_STD = (58.395, 57.12, 57.375)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def normalize_images(images: Array, style: str) -> Array:
    """uint8 RGB [B,H,W,3] -> float32 network input: caffe BGR minus mean, or pytorch RGB (x - mean) / std."""
    x = images.astype(jnp.float32)
    if style == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    return (x - jnp.asarray(PYTORCH_RGB_MEAN, jnp.float32)) / jnp.asarray(PYTORCH_RGB_STD, jnp.float32)


def padding_mask(image_shape: Array, padded_hw: Sequence[int]) -> Array:
    """1.0 inside each image's unpadded (h, w) [B,2], 0.0 in the padding -> float32 [B,H,W]."""
    rows = jnp.arange(padded_hw[0])[None, :, None] < image_shape[:, 0, None, None]
    cols = jnp.arange(padded_hw[1])[None, None, :] < image_shape[:, 1, None, None]
    return (rows & cols).astype(jnp.float32)


class DATE(nn.Module):
    """Backbone + neck + head; `__call__(images uint8 [B,H,W,3])` -> dict of float32 [B,N(,*9),K] outputs."""

    backbone: nn.Module
    neck: nn.Module
    bbox_head: nn.Module
    style: str = "caffe"
    dtype: Dtype = jnp.float32

    def __call__(self, images: Array, image_shape: Array | None = None) -> dict[str, Array]:
        """images uint8 [B,H,W,3]; image_shape int [B,2] (unpadded h, w): padding is 0 after normalisation (mmdet)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DATE expects images [B,H,W,3] (uint8 RGB); got shape {tuple(images.shape)}.")
        x = normalize_images(images, self.style)
        if image_shape is not None:
            x = x * padding_mask(image_shape, images.shape[1:3])[..., None]
        return self.bbox_head(self.neck(self.backbone(x.astype(self.dtype))))


def build_model(config: ml_collections.ConfigDict, conv_op: ConvOp = lax.conv_general_dilated) -> DATE:
    """The DATE network described by `config.model`, computing in `config.dtype` (params float32), its convolutions
    computed by `conv_op` (a drop-in for `lax.conv_general_dilated`)."""
    model = config.model
    if model.num_classes < 1:
        raise ValueError(f"config.model.num_classes={model.num_classes}: a model needs at least one class (0 means "
                         "'read it from the training annotations' and is resolved by the training command)")
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    if model.backbone.style not in STYLES:
        raise ValueError(f"config.model.backbone.style={model.backbone.style!r} is not supported; use one of "
                         f"{STYLES}.")
    dtype = DTYPES[config.dtype]
    backbone = ResNet(model.backbone.depth, model.backbone.style, model.backbone.base_width,
                      tuple(model.backbone.stage_blocks), dtype, conv_op)
    neck = FPN(model.neck.out_channels, dtype, conv_op)
    anchors = model.anchors
    head = DATEHead(
        num_classes=model.num_classes, strides=tuple(model.strides), feat_channels=model.head.feat_channels,
        stacked_convs=model.head.stacked_convs, num_groups=model.head.num_groups, prior_prob=model.head.prior_prob,
        o2o=model.o2o, o2m=model.o2m,
        num_anchors=priors.num_anchors_per_point(anchors.scales_per_octave, tuple(anchors.ratios)),
        max_filter_kernel=model.max_filter.kernel_size, max_filter_levels=model.max_filter.num_levels, dtype=dtype,
        conv_op=conv_op)
    return DATE(backbone, neck, head, model.backbone.style, dtype)


def init_variables(model: nn.Module, rng: Array, image_hw: Sequence[int]) -> dict[str, PyTree]:
    """Initial variables {'params', 'batch_stats'} of `model` for a batch-1 uint8 image of (H, W) `image_hw`.

    `rng` may be any key (typed or legacy uint32[2]); the initialisers draw from an 'rbg' key derived from it
    deterministically, because XLA compiles RngBitGenerator much faster than threefry on a CPU.
    """
    images = jnp.zeros((1, int(image_hw[0]), int(image_hw[1]), 3), jnp.uint8)
    variables = jax.jit(model.init)(_rbg_key(rng), images)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def abstract_variables(config: ml_collections.ConfigDict) -> dict[str, PyTree]:
    """{'params', 'batch_stats'} of ShapeDtypeStructs of the model `config` builds (nothing is computed)."""
    model = build_model(config)
    size = 2 * max(config.model.strides)
    return jax.eval_shape(lambda rng: init_variables(model, rng, (size, size)), jax.random.PRNGKey(0))


def _rbg_key(rng: Array) -> Array:
    """An 'rbg' key [] whose 4 seed words are the words of `rng`, repeated (threefry keys have 2)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) and jax.random.key_impl(rng) == "rbg":
        return rng
    words = jax.random.key_data(rng).reshape(-1).astype(jnp.uint32)
    return jax.random.wrap_key_data(jnp.resize(words, (4,)), impl="rbg")


def trainable_mask(params: PyTree, config: ml_collections.ConfigDict) -> PyTree:
    """Bool pytree like `params`: False for the backbone stem and stages 1..config.model.backbone.frozen_stages."""
    frozen_stages = int(config.model.backbone.frozen_stages)
    frozen = set()
    if frozen_stages >= 0:
        frozen = {"conv1", "bn1"} | {f"layer{s}" for s in range(1, frozen_stages + 1)}

    def trainable(path: tuple[str, ...]) -> bool:
        if len(path) < 2 or path[0] != "backbone":
            return True
        return path[1].split("_")[0] not in frozen

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: trainable(path) for path in flat})


def backbone_mask(params: PyTree) -> PyTree:
    """Bool pytree like `params`: True for every leaf under `backbone` (the lr x backbone_lr_mult group)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[0] == "backbone" for path in flat})
