"""A drop-in for `lax.conv_general_dilated` whose kernel gradient is a sum of matmuls, for the CPU backend.

XLA's CPU backend computes the kernel gradient of a convolution (contracting batch and space) on a slow path, several
times the forward's time; written as kh*kw matmuls of shifted input views against the output gradient, the same
numbers take about the forward's time (benchmarks/README.md has the figures). Input gradients and the forward stay
XLA's. Only plain NHWC/HWIO convs with explicit padding, no dilation and one group take this path; others go to
`lax.conv_general_dilated` unchanged. `date_jax.runtime.conv_op()` decides where it is used (tuned CPU hosts only).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], ...]


def kernel_grad_by_matmuls(x: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                           padding: Padding) -> jax.Array:
    """d(loss)/d(kernel) of an NHWC/HWIO conv: x [B,H,W,I], dy [B,h,w,O] -> [kh,kw,I,O] float32.

    Each tap is a matmul over batch and space; the CPU dot wants the contraction minor in one operand, so one operand
    is laid out channels-first. For spatial kernels, and for 1x1 convs that reduce channels, that is the output
    gradient, transposed once for all taps (the input's shifted views are then plain slices, and a transposed copy
    of the input would also recompute the elementwise chain that produced it); otherwise it is the input. Stride-1
    spatial convs that narrow the channels (the head's predictors) shift the output gradient instead.
    """
    (sh, sw), (ho, wo) = strides, dy.shape[1:3]
    kh, kw = kernel_hw
    if (sh, sw) == (1, 1) and kh * kw > 1 and dy.shape[3] < x.shape[3]:
        return _kernel_grad_shifting_dy(x, dy, kernel_hw, padding)
    padded = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    views = [lax.slice(padded, (0, i, j, 0), (padded.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                              padded.shape[3]), (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
    if kh * kw == 1 and x.shape[3] <= dy.shape[3]:
        return jnp.einsum("bhwi,bhwo->io", views[0], dy, preferred_element_type=jnp.float32)[None, None]
    dy_channels_first = jnp.transpose(dy, (3, 0, 1, 2))
    taps = [jnp.einsum("obhw,bhwi->oi", dy_channels_first, view, preferred_element_type=jnp.float32)
            for view in views]   # [O, I] each: transposed only after stacking, so XLA keeps this operand order
    return jnp.stack(taps).reshape(kh, kw, dy.shape[3], x.shape[3]).transpose(0, 1, 3, 2)


def _kernel_grad_shifting_dy(x: jax.Array, dy: jax.Array, kernel_hw: Sequence[int], padding: Padding) -> jax.Array:
    """The stride-1 kernel gradient with the taps shifting the narrower output gradient instead of the input:
    x [B,H,W,I], dy [B,h,w,O] with O < I -> [kh,kw,I,O] float32. Tap (i, j) sums x[r, c] * dy[r + pt - i, c + pl - j]
    over the input's positions (dy zero outside), so the input is transposed once and only dy's views are copied."""
    (kh, kw), (h, w), (ho, wo) = kernel_hw, x.shape[1:3], dy.shape[1:3]
    (pt, _), (pl, _) = padding
    top, left = max(0, kh - 1 - pt), max(0, kw - 1 - pl)
    padded = jnp.pad(dy, ((0, 0), (top, max(0, h + pt - ho)), (left, max(0, w + pl - wo)), (0, 0)))
    x_channels_first = jnp.transpose(x, (3, 0, 1, 2))
    taps = [jnp.einsum("ibhw,bhwo->io", x_channels_first,
                       lax.slice(padded, (0, top + pt - i, left + pl - j, 0),
                                 (padded.shape[0], top + pt - i + h, left + pl - j + w, padded.shape[3])),
                       preferred_element_type=jnp.float32)
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, x.shape[3], dy.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _conv_fwd(x, w, strides, padding):
    return _conv(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residual, dy):
    x, w = residual
    _, input_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(x_, w, strides, padding, dimension_numbers=NHWC), x)
    return input_vjp(dy)[0], kernel_grad_by_matmuls(x, dy, w.shape[:2], strides, padding).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
              batch_group_count) -> bool:
    """True for a 2-D NHWC/HWIO conv with explicit padding, no dilation and a single group."""
    if lhs.ndim != 4 or isinstance(padding, str) or feature_group_count != 1 or batch_group_count != 1:
        return False
    if any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())):
        return False
    return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated`; plain convs get the matmul kernel gradient."""
    use_matmuls = (precision is None and preferred_element_type is None
                   and _is_plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                 feature_group_count, batch_group_count))
    if not use_matmuls:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), tuple(tuple(int(p) for p in pad) for pad in padding))
