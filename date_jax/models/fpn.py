"""FPN neck P3-P7 of docs/spec.md §2.2 (mmdet `FPN`, start_level 1, add_extra_convs='on_output', ReLU before extra
convs).

Laterals are 1x1 convs on C3-C5; the top-down path resizes each coarser map to the exact size of the finer one with
PyTorch's legacy `nearest` rule and adds it; P3-P5 are 3x3 convs of the sums; P6 is a 3x3/2 conv of the P5 output and
P7 a 3x3/2 conv of ReLU(P6). Submodules: `lateral_convs_{0,1,2}/conv`, `fpn_convs_{0..4}/conv` (mmcv `ConvModule`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from date_jax.models.layers import ConvModule, ConvOp

Array = jax.Array
Dtype = Any


def resize_nearest(x: Array, out_hw: Sequence[int]) -> Array:
    """PyTorch legacy `nearest` to an explicit size: [B,h,w,C] -> [B,H,W,C], source index min(floor(i*h/H), h-1)."""
    _, h, w, _ = x.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if (out_h, out_w) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = _nearest_index(h, out_h)
    cols = _nearest_index(w, out_w)
    return x[:, rows][:, :, cols]


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's nearest rule (float32 scale = in/out) -> int32 [out_size]."""
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
    return np.minimum(index, in_size - 1)


class FPN(nn.Module):
    """Feature pyramid: C2..C5 list -> [P3, P4, P5, P6, P7], each [B,H_l,W_l,out_channels]."""

    out_channels: int = 256
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> list[Array]:
        def conv(kernel_size: int, stride: int, name: str) -> ConvModule:
            return ConvModule(self.out_channels, kernel_size, stride, dtype=self.dtype, conv_op=self.conv_op,
                              name=name)

        inputs = list(features)[1:]         # start_level = 1: C3, C4, C5
        laterals = [conv(1, 1, f"lateral_convs_{i}")(c) for i, c in enumerate(inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            finer = laterals[i - 1]
            laterals[i - 1] = finer + resize_nearest(laterals[i], finer.shape[1:3])
        outs = [conv(3, 1, f"fpn_convs_{i}")(lat) for i, lat in enumerate(laterals)]
        p6 = conv(3, 2, f"fpn_convs_{len(outs)}")(outs[-1])
        p7 = conv(3, 2, f"fpn_convs_{len(outs) + 1}")(nn.relu(p6))
        return outs + [p6, p7]
