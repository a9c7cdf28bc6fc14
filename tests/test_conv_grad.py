"""The matmul kernel gradient equals XLA's convolution gradient (kernels 1/3/7, strides 1/2, odd and even sizes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from date_jax.models import conv_grad


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 9), (1, 2, 10), (3, 1, 8), (3, 2, 9), (7, 2, 12), (3, 2, 10)])
def test_gradients_equal_xla(kernel, stride, size):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + size)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 6)), jnp.float32)
    pad = ((kernel // 2, kernel // 2),) * 2
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


def _dot_count(conv) -> int:
    x, w = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv_grad.NHWC)),
                     argnums=(0, 1))
    return str(jax.make_jaxpr(grads)(x, w)).count("dot_general[")


def test_kernel_grad_runs_as_matmuls_on_cpu():
    """XLA's path computes the kernel gradient as a convolution; ours as one matmul per 3x3 tap."""
    assert _dot_count(lax.conv_general_dilated) == 0
    assert _dot_count(conv_grad.conv_general_dilated) == 9
