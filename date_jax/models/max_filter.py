"""DeFCN 3D Max Filtering (docs/spec.md §9): max over a k x k spatial window and up to `num_levels` adjacent FPN levels.

For level l: U_k = conv3x3(R_k) with one shared conv; the neighbours k in [l - m, l + m] (m = num_levels // 2, clipped
to the pyramid) are resized to level l's size by bilinear interpolation with PyTorch's align_corners=False rule and no
antialiasing; the maximum over those levels and a k x k window (padding -inf) is added to the unconvolved R_l, then
GroupNorm and ReLU. Submodules: `conv` (shared 3x3) and `norm` (shared GroupNorm).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from date_jax.models.layers import ConvOp, group_norm, head_normal, torch_conv

Array = jax.Array
Dtype = Any

def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch align_corners=False taps (i0, i1, weight of i1), each [out]: src = max((i + 0.5) * in / out - 0.5, 0)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(x: Array, out_hw: Sequence[int]) -> Array:
    """Bilinear resize without antialias, PyTorch `F.interpolate(..., 'bilinear', align_corners=False)`:
    [B,h,w,C] -> [B,H,W,C]."""
    _, h, w, _ = x.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if (h, w) == (out_h, out_w):
        return x
    r0, r1, wr = _linear_taps(h, out_h)
    c0, c1, wc = _linear_taps(w, out_w)
    wr = jnp.asarray(wr, x.dtype)[None, :, None, None]
    wc = jnp.asarray(wc, x.dtype)[None, None, :, None]
    rows = x[:, r0] * (1 - wr) + x[:, r1] * wr
    return rows[:, :, c0] * (1 - wc) + rows[:, :, c1] * wc


def max_filter_3d(features: Sequence[Array], kernel_size: int = 3, num_levels: int = 3) -> list[Array]:
    """3D max over a kernel_size^2 window and the levels l-m..l+m (m = num_levels // 2) of a pyramid of [B,H_l,W_l,C];
    neighbours are bilinearly resized to level l's size first. Returns one [B,H_l,W_l,C] per level."""
    margin = num_levels // 2
    pad = kernel_size // 2
    outputs = []
    for level, target in enumerate(features):
        lo, hi = max(0, level - margin), min(len(features) - 1, level + margin)
        stacked = jnp.stack([resize_bilinear(features[k], target.shape[1:3]) for k in range(lo, hi + 1)])
        across_levels = jnp.max(stacked, axis=0)
        outputs.append(nn.max_pool(across_levels, (kernel_size, kernel_size), strides=(1, 1),
                                   padding=((pad, pad), (pad, pad))))
    return outputs


class MaxFilter3D(nn.Module):
    """DeFCN `max3d` block: ReLU(GN(max_filter_3d(conv(R)) + R)) per level; list of [B,H_l,W_l,C] -> same shapes."""

    channels: int = 256
    num_groups: int = 32
    kernel_size: int = 3
    num_levels: int = 3
    dtype: Dtype = jnp.float32
    conv_op: ConvOp = lax.conv_general_dilated

    @nn.compact
    def __call__(self, features: Sequence[Array]) -> list[Array]:
        conv = torch_conv(self.channels, 3, 1, True, head_normal, self.dtype, name="conv", conv_op=self.conv_op)
        norm = group_norm(self.num_groups, self.dtype, name="norm")
        filtered = max_filter_3d([conv(f) for f in features], self.kernel_size, self.num_levels)
        return [nn.relu(norm(m + f)) for m, f in zip(filtered, features)]
