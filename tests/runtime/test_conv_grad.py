"""The matmul kernel gradient equals XLA's convolution gradient (kernels 1/3/5/7, strides 1/2, odd and even sizes,
symmetric and lopsided padding, convs that widen and that narrow the channels)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from date_jax.runtime import conv_grad


@pytest.mark.parametrize("kernel,stride,size,out_channels,pad", [
    (1, 1, 9, 6, None), (1, 2, 10, 6, None), (3, 1, 8, 6, None), (3, 2, 9, 6, None), (7, 2, 12, 6, None),
    (3, 2, 10, 6, None), (1, 1, 9, 2, None), (3, 2, 9, 2, None),
    # stride 1 with fewer output than input channels: the taps shift the output gradient
    (3, 1, 8, 2, None), (3, 1, 7, 1, ((0, 2), (2, 0))), (5, 1, 9, 3, ((2, 2), (1, 3))), (3, 1, 6, 2, ((3, 1), (0, 0)))])
def test_gradients_equal_xla(kernel, stride, size, out_channels, pad):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + size + out_channels * 1000)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, out_channels)), jnp.float32)
    pad = pad or ((kernel // 2, kernel // 2),) * 2
    probe = jnp.asarray(rng.normal(size=lax.conv_general_dilated(x, w, (stride, stride), pad,
                                                                 dimension_numbers=conv_grad.NHWC).shape))

    def loss(conv, x, w):
        return jnp.sum(conv(x, w, (stride, stride), pad, dimension_numbers=conv_grad.NHWC) * probe)

    expected = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1))(x, w)
    got = jax.jit(jax.grad(lambda x, w: loss(conv_grad.conv_general_dilated, x, w), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv_grad.conv_general_dilated(x, w, (stride, stride), pad,
                                                              dimension_numbers=conv_grad.NHWC),
                               lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=conv_grad.NHWC),
                               rtol=1e-6, atol=1e-5)


def _dot_count(conv, in_channels: int = 3) -> int:
    x, w = jnp.ones((1, 8, 8, in_channels)), jnp.ones((3, 3, in_channels, 4))
    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv_grad.NHWC)),
                     argnums=(0, 1))
    return str(jax.make_jaxpr(grads)(x, w)).count("dot_general[")


def test_kernel_grad_runs_as_matmuls_on_cpu():
    """XLA's path computes the kernel gradient as a convolution; ours as one matmul per 3x3 tap."""
    assert _dot_count(lax.conv_general_dilated) == 0
    assert _dot_count(conv_grad.conv_general_dilated) == 9
    assert _dot_count(conv_grad.conv_general_dilated, in_channels=8) == 9   # the form that shifts dy
