"""The runtime switch: the CPU-tuned path and stock JAX build the same model and compute the same gradients; the
conv primitive is injected into the models, which trace stock `lax` convolutions unless told otherwise."""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from date_jax import config as config_lib
from date_jax import runtime
from date_jax.models import detector
from date_jax.runtime import conv_grad


def _loss_and_grads(conv_op):
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes=3)
    model = detector.build_model(config, conv_op)
    variables = detector.init_variables(detector.build_model(config), jax.random.PRNGKey(0), (64, 64))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), jnp.uint8)

    def loss(params):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images)
        return sum(jnp.sum(jnp.sin(v)) for v in out.values())

    return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_stock_and_tuned_convolutions_give_the_same_gradients():
    stock_loss, stock = _loss_and_grads(lax.conv_general_dilated)
    tuned_loss, tuned = _loss_and_grads(conv_grad.conv_general_dilated)
    np.testing.assert_allclose(tuned_loss, stock_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(stock)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_the_switch_picks_the_conv_and_the_options(monkeypatch):
    assert runtime.cpu_tuned()                       # tests/conftest.py configured the runtime like an entry point
    assert runtime.conv_op() is conv_grad.conv_general_dilated and runtime.compiler_options()
    monkeypatch.setenv(runtime.SWITCH, "0")
    try:
        assert not runtime.configure(tensorflow=False)
        assert runtime.conv_op() is lax.conv_general_dilated and runtime.compiler_options() == {}
    finally:
        monkeypatch.delenv(runtime.SWITCH)
        assert runtime.configure(tensorflow=False)


def test_models_default_to_stock_convolutions():
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config()
    assert detector.build_model(config).backbone.conv_op is lax.conv_general_dilated
