"""The building blocks every part of the network shares: the PyTorch-style conv, mmcv's ConvModule, GroupNorm and the
reference's initialisers.

The convolution primitive is injected (`conv_op`, default `lax.conv_general_dilated`), as flax's examples inject their
`conv`: models hold no backend logic, and a caller may pass another implementation with the same signature (date-jax's
CPU runtime passes one whose kernel gradient is computed as matmuls, see `date_jax.runtime`).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
ConvOp = Callable[..., Any]        # the signature of `lax.conv_general_dilated`

GN_EPS = 1e-5
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")   # mmdet ResNet: fan_out, ReLU gain
xavier_uniform = nn.initializers.xavier_uniform()                              # mmcv ConvModule default (FPN)
head_normal = nn.initializers.normal(0.01)                                     # head convs: N(0, 0.01^2)


def torch_conv(features: int, kernel_size: int, stride: int = 1, use_bias: bool = False,
               kernel_init: Callable = kaiming_fan_out, dtype: Dtype = jnp.float32, name: str | None = None,
               bias_init: Callable = nn.initializers.zeros, conv_op: ConvOp = lax.conv_general_dilated) -> nn.Conv:
    """A PyTorch-style square conv: symmetric explicit padding kernel_size // 2, float32 params, `dtype` compute."""
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
                   dtype=dtype, param_dtype=jnp.float32, name=name, conv_general_dilated=conv_op)


def group_norm(num_groups: int, dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
    """PyTorch GroupNorm (eps 1e-5, affine, weight 1 / bias 0) over [B,H,W,C]; statistics in float32."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=GN_EPS, dtype=dtype, param_dtype=jnp.float32,
                        use_fast_variance=False, name=name)


class ConvModule(nn.Module):
    """mmcv ConvModule: `conv` (k x k, symmetric padding), optional GroupNorm `gn`, optional ReLU: [B,H,W,Cin] ->
    [B,H/s,W/s,features]."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    use_bias: bool = True
    num_groups: int = 0             # 0 -> no GroupNorm
    activate: bool = False
    kernel_init: Callable = xavier_uniform
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = torch_conv(self.features, self.kernel_size, self.stride, self.use_bias, self.kernel_init, self.dtype,
                       name="conv", conv_op=self.conv_op)(x)
        if self.num_groups:
            x = group_norm(self.num_groups, self.dtype, name="gn")(x)
        return nn.relu(x) if self.activate else x
