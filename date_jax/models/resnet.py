"""ResNet-18/34/50/101 backbone with frozen BatchNorm, NHWC, PyTorch-exact padding (mmdet `ResNet` naming).

Styles (docs/spec.md §2.1): `caffe` puts the stride of a bottleneck on its first 1x1 conv (`conv1`), `pytorch` on the
3x3
(`conv2`). Every conv pads explicitly and symmetrically by kernel // 2 (never 'SAME'); the stem max-pool is 3x3/2 with
padding 1 of -inf. BatchNorm is frozen: its affine parameters and running statistics all live in the non-trainable
collection `batch_stats` and are never updated.

Submodule names mirror the mmdet state_dict: `conv1`, `bn1`, `layer{s}_{b}/conv{1,2,3}`, `layer{s}_{b}/bn{1,2,3}`,
`layer{s}_0/downsample_0` (1x1 conv) and `layer{s}_0/downsample_1` (BN).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from date_jax.models.layers import ConvOp, torch_conv

Array = jax.Array
Dtype = Any

BN_EPS = 1e-5
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BOTTLENECK_DEPTHS = (50, 101)
STYLES = ("caffe", "pytorch")

def max_pool_3x3_s2(x: Array) -> Array:
    """PyTorch MaxPool2d(3, stride 2, padding 1): [B,H,W,C] -> [B,ceil(H/2),ceil(W/2),C], padding counts as -inf."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class FrozenBatchNorm(nn.Module):
    """BatchNorm in eval mode whose scale, bias, mean and var all sit in `batch_stats`: [..., C] -> [..., C]."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        scale = self.variable("batch_stats", "scale", lambda: jnp.ones((channels,), jnp.float32)).value
        bias = self.variable("batch_stats", "bias", lambda: jnp.zeros((channels,), jnp.float32)).value
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32)).value
        mul = scale * jax.lax.rsqrt(var + BN_EPS)
        add = bias - mean * mul
        return x * mul.astype(self.dtype) + add.astype(self.dtype)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) with a 1x1 projection shortcut when the shape changes: [B,H,W,Cin] ->
    [B,H/s,W/s,planes]."""

    planes: int
    stride: int = 1
    style: str = "caffe"
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated
    expansion = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out = torch_conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1", conv_op=self.conv_op)(x)
        out = nn.relu(FrozenBatchNorm(self.dtype, name="bn1")(out))
        out = torch_conv(self.planes, 3, 1, dtype=self.dtype, name="conv2", conv_op=self.conv_op)(out)
        out = FrozenBatchNorm(self.dtype, name="bn2")(out)
        return nn.relu(out + _shortcut(x, self.planes, self.stride, self.dtype, self.conv_op))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) bottleneck; caffe style strides the first 1x1, pytorch style the 3x3:
    [B,H,W,Cin] -> [B,H/s,W/s,4*planes]."""

    planes: int
    stride: int = 1
    style: str = "caffe"
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated
    expansion = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        stride1, stride2 = (self.stride, 1) if self.style == "caffe" else (1, self.stride)
        out = torch_conv(self.planes, 1, stride1, dtype=self.dtype, name="conv1", conv_op=self.conv_op)(x)
        out = nn.relu(FrozenBatchNorm(self.dtype, name="bn1")(out))
        out = torch_conv(self.planes, 3, stride2, dtype=self.dtype, name="conv2", conv_op=self.conv_op)(out)
        out = nn.relu(FrozenBatchNorm(self.dtype, name="bn2")(out))
        out = torch_conv(self.planes * 4, 1, 1, dtype=self.dtype, name="conv3", conv_op=self.conv_op)(out)
        out = FrozenBatchNorm(self.dtype, name="bn3")(out)
        return nn.relu(out + _shortcut(x, self.planes * 4, self.stride, self.dtype, self.conv_op))


def _shortcut(x: Array, features: int, stride: int, dtype: Dtype, conv_op: ConvOp) -> Array:
    """Identity, or mmdet's `downsample` (1x1 conv with stride + BN) when channels or resolution change."""
    if x.shape[-1] == features and stride == 1:
        return x
    x = torch_conv(features, 1, stride, dtype=dtype, name="downsample_0", conv_op=conv_op)(x)
    return FrozenBatchNorm(dtype, name="downsample_1")(x)


class ResNet(nn.Module):
    """mmdet ResNet with four stages; returns C2..C5 as a list of [B,H/4..H/32,W/4..W/32,C] (ceil-halved sizes)."""

    depth: int = 50
    style: str = "caffe"
    base_width: int = 64
    stage_blocks: Sequence[int] = ()
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"config.model.backbone.depth={self.depth} is not supported; use one of "
                             f"{sorted(STAGE_BLOCKS)}.")
        if self.style not in STYLES:
            raise ValueError(f"config.model.backbone.style={self.style!r} is not supported; use one of {STYLES}.")
        blocks = tuple(self.stage_blocks) or STAGE_BLOCKS[self.depth]
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"config.model.backbone.stage_blocks={tuple(self.stage_blocks)} must hold 4 positive "
                             "block counts (or be empty for the standard counts).")
        block_cls = Bottleneck if self.depth in BOTTLENECK_DEPTHS else BasicBlock
        x = torch_conv(self.base_width, 7, 2, dtype=self.dtype, name="conv1", conv_op=self.conv_op)(x)
        x = nn.relu(FrozenBatchNorm(self.dtype, name="bn1")(x))
        x = max_pool_3x3_s2(x)
        outputs = []
        for s, num_blocks in enumerate(blocks):
            planes = self.base_width * 2 ** s
            for b in range(num_blocks):
                stride = 2 if s > 0 and b == 0 else 1
                x = block_cls(planes, stride, self.style, self.dtype, self.conv_op, name=f"layer{s + 1}_{b}")(x)
            outputs.append(x)
        return outputs
