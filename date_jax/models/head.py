"""DATE head (docs/spec.md §3): shared GN towers and per-level Scales, then the one-to-one and one-to-many predictors.

Both towers and the 5 Scales are shared by every level and by both branches; each predictor's convs are shared by
every level. Outputs are flattened level-major (P3..P7), row-major inside a level, anchor-minor for RetinaNet, and
returned in float32 (docs/design.md §2). Submodules: `cls_convs_{i}/{conv,gn}`, `reg_convs_{i}/{conv,gn}`, `scales_{l}`
(param `scale`), `predictors_0/{conv_cls,conv_reg[,max3d,filter]}`, `predictors_1/{conv_cls,conv_reg[,conv_ctr]}`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from date_jax.models.layers import ConvModule, ConvOp, head_normal, torch_conv
from date_jax.models.max_filter import MaxFilter3D

Array = jax.Array
Dtype = Any

O2O_KINDS = ("point", "3dmf", "none")
O2M_KINDS = ("fcos", "retina", "none")
FILTER_PROB_EPS = 1e-5      # 3DMF clips its product probability to [eps, 1 - eps] (mmdet's inverse_sigmoid eps)


def o2o_scores(logits: Array, filter_logits: Array | None = None) -> Array:
    """One-to-one class probabilities [..., C]: sigmoid(z), or with a 3DMF filter [..., 1]
    clip(sigmoid(z) * sigmoid(f), 1e-5, 1 - 1e-5)."""
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    if filter_logits is None:
        return probs
    probs = probs * jax.nn.sigmoid(filter_logits.astype(jnp.float32))
    return jnp.clip(probs, FILTER_PROB_EPS, 1.0 - FILTER_PROB_EPS)


def filtered_logits(cls_logits: Array, filter_logits: Array) -> Array:
    """The 3DMF score as a logit, logit(clip(sigmoid(z) * sigmoid(f), 1e-5, 1 - 1e-5)); z [..., C], f [..., 1]."""
    prob = jnp.clip(jax.nn.sigmoid(cls_logits) * jax.nn.sigmoid(filter_logits), FILTER_PROB_EPS,
                    1 - FILTER_PROB_EPS)
    return jnp.log(prob) - jnp.log1p(-prob)


def o2o_class_logits(outputs: dict[str, Array]) -> Array:
    """The one-to-one branch's class logits [..., N, C] that assignment and loss score: 3DMF-filtered when the head
    has the filter."""
    if "o2o_filter" in outputs:
        return filtered_logits(outputs["o2o_logits"], outputs["o2o_filter"])
    return outputs["o2o_logits"]


def cls_bias_init(prior_prob: float):
    """Constant bias -ln((1 - p) / p) so every class starts at probability `prior_prob`."""
    return nn.initializers.constant(-math.log((1.0 - prior_prob) / prior_prob))


def predictor_conv(features: int, dtype: Dtype, name: str, conv_op: ConvOp,
                   prior_prob: float | None = None) -> nn.Conv:
    """3x3 predictor conv, weight N(0, 0.01^2), bias 0 (or the focal prior bias when `prior_prob` is given)."""
    bias_init = nn.initializers.zeros if prior_prob is None else cls_bias_init(prior_prob)
    return torch_conv(features, 3, 1, True, head_normal, dtype, name=name, bias_init=bias_init, conv_op=conv_op)


def _flatten(x: Array, last: int) -> Array:
    """[B,H,W,A*last] -> [B,H*W*A,last] in float32 (row-major, anchor-minor)."""
    return x.astype(jnp.float32).reshape(x.shape[0], -1, last)


class Scale(nn.Module):
    """mmcv Scale: one learnable float32 scalar `scale` (init 1.0) multiplying its input."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return x * self.param("scale", nn.initializers.ones, (), jnp.float32)


class OneToOnePredictor(nn.Module):
    """O2O point predictor (docs/spec.md §3.2), optionally with the 3DMF filter (§3.5): per-level features -> flattened
    `o2o_logits` [B,N,C], `o2o_ltrb` [B,N,4] = ReLU(s*x)*stride pixels, with 3DMF `o2o_filter` [B,N,1] logits."""

    num_classes: int
    prior_prob: float = 0.01
    use_max_filter: bool = False
    channels: int = 256
    num_groups: int = 32
    max_filter_kernel: int = 3
    max_filter_levels: int = 3
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, cls_feats: Sequence[Array], reg_feats: Sequence[Array], scales: Sequence[Scale],
                 strides: Sequence[int]) -> dict[str, Array]:
        conv_cls = predictor_conv(self.num_classes, self.dtype, "conv_cls", self.conv_op, self.prior_prob)
        conv_reg = predictor_conv(4, self.dtype, "conv_reg", self.conv_op)
        out = {
            "o2o_logits": [_flatten(conv_cls(f), self.num_classes) for f in cls_feats],
            "o2o_ltrb": [_flatten(nn.relu(scale(conv_reg(f).astype(jnp.float32))) * stride, 4)
                         for f, scale, stride in zip(reg_feats, scales, strides)],
        }
        if self.use_max_filter:
            filtered = MaxFilter3D(self.channels, self.num_groups, self.max_filter_kernel, self.max_filter_levels,
                                   self.dtype, self.conv_op, name="max3d")(reg_feats)
            conv_filter = predictor_conv(1, self.dtype, "filter", self.conv_op)
            out["o2o_filter"] = [_flatten(conv_filter(f), 1) for f in filtered]
        return out


class FCOSPredictor(nn.Module):
    """O2M FCOS predictor (docs/spec.md §3.3): `o2m_logits` [B,N,C], `o2m_ltrb` [B,N,4] = exp(s*x) pixels,
    `o2m_centerness` [B,N,1] logits from the cls tower."""

    num_classes: int
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, cls_feats: Sequence[Array], reg_feats: Sequence[Array], scales: Sequence[Scale],
                 strides: Sequence[int]) -> dict[str, Array]:
        conv_cls = predictor_conv(self.num_classes, self.dtype, "conv_cls", self.conv_op, self.prior_prob)
        conv_reg = predictor_conv(4, self.dtype, "conv_reg", self.conv_op)
        conv_ctr = predictor_conv(1, self.dtype, "conv_ctr", self.conv_op)
        return {
            "o2m_logits": [_flatten(conv_cls(f), self.num_classes) for f in cls_feats],
            "o2m_ltrb": [_flatten(jnp.exp(scale(conv_reg(f).astype(jnp.float32))), 4)
                         for f, scale in zip(reg_feats, scales)],
            "o2m_centerness": [_flatten(conv_ctr(f), 1) for f in cls_feats],
        }


class RetinaPredictor(nn.Module):
    """O2M RetinaNet predictor (docs/spec.md §3.4): `o2m_logits` [B,N*A,C] (channel a*C+c), `o2m_deltas` [B,N*A,4]
    (channel a*4+k) = s*x."""

    num_classes: int
    num_anchors: int = 9
    prior_prob: float = 0.01
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, cls_feats: Sequence[Array], reg_feats: Sequence[Array], scales: Sequence[Scale],
                 strides: Sequence[int]) -> dict[str, Array]:
        conv_cls = predictor_conv(self.num_anchors * self.num_classes, self.dtype, "conv_cls", self.conv_op,
                                  self.prior_prob)
        conv_reg = predictor_conv(self.num_anchors * 4, self.dtype, "conv_reg", self.conv_op)
        return {
            "o2m_logits": [_flatten(conv_cls(f), self.num_classes) for f in cls_feats],
            "o2m_deltas": [_flatten(scale(conv_reg(f).astype(jnp.float32)), 4) for f, scale in zip(reg_feats, scales)],
        }


class DATEHead(nn.Module):
    """Shared towers + Scales + the configured predictors: list of [B,H_l,W_l,C] -> network-output dict
    (docs/design.md §2)."""

    num_classes: int
    strides: Sequence[int] = (8, 16, 32, 64, 128)
    feat_channels: int = 256
    stacked_convs: int = 4
    num_groups: int = 32
    prior_prob: float = 0.01
    o2o: str = "point"
    o2m: str = "fcos"
    num_anchors: int = 9
    max_filter_kernel: int = 3
    max_filter_levels: int = 3
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> dict[str, Array]:
        if self.o2o not in O2O_KINDS:
            raise ValueError(f"config.model.o2o={self.o2o!r} is not supported; use one of {O2O_KINDS}.")
        if self.o2m not in O2M_KINDS:
            raise ValueError(f"config.model.o2m={self.o2m!r} is not supported; use one of {O2M_KINDS}.")
        if self.o2o == "none" and self.o2m == "none":
            raise ValueError("config.model.o2o and config.model.o2m are both 'none'; enable at least one branch.")
        if len(features) != len(self.strides):
            raise ValueError(f"The neck gave {len(features)} levels but config.model.strides has "
                             f"{len(self.strides)}; they must match.")
        towers = {}
        for name in ("cls_convs", "reg_convs"):
            feats = list(features)
            for i in range(self.stacked_convs):
                layer = ConvModule(self.feat_channels, 3, use_bias=False, num_groups=self.num_groups, activate=True,
                                   kernel_init=head_normal, dtype=self.dtype, conv_op=self.conv_op,
                                   name=f"{name}_{i}")
                feats = [layer(f) for f in feats]
            towers[name] = feats
        scales = [Scale(name=f"scales_{level}") for level in range(len(self.strides))]
        predictors = []
        if self.o2o != "none":
            predictors.append(OneToOnePredictor(
                self.num_classes, self.prior_prob, self.o2o == "3dmf", self.feat_channels, self.num_groups,
                self.max_filter_kernel, self.max_filter_levels, self.dtype, self.conv_op, name="predictors_0"))
        if self.o2m == "fcos":
            predictors.append(FCOSPredictor(self.num_classes, self.prior_prob, self.dtype, self.conv_op,
                                            name="predictors_1"))
        elif self.o2m == "retina":
            predictors.append(RetinaPredictor(self.num_classes, self.num_anchors, self.prior_prob, self.dtype,
                                              self.conv_op, name="predictors_1"))
        outputs = {}
        for predictor in predictors:
            per_level = predictor(towers["cls_convs"], towers["reg_convs"], scales, self.strides)
            outputs.update({key: jnp.concatenate(levels, axis=1) for key, levels in per_level.items()})
        return outputs
