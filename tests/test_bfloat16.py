"""Under bfloat16 compute (config.dtype on accelerators) the values that need the range or the precision stay
float32: parameters, GroupNorm statistics, the network outputs (logits and boxes fed to assignment), the targets'
inputs, the losses and the decoded boxes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from date_jax import config as config_lib
from date_jax import decode
from date_jax.models import detector
from date_jax.models.layers import group_norm
from date_jax.train import step as step_lib


def _bf16_config():
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes=3)
    config.dtype = "bfloat16"
    return config


def test_outputs_losses_and_detections_are_float32():
    config = _bf16_config()
    model = detector.build_model(config)
    variables = detector.init_variables(model, jax.random.PRNGKey(0), (64, 64))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), jnp.uint8)
    image_shape = jnp.full((2, 2), 64, jnp.int32)
    outputs = model.apply(variables, images, image_shape)
    assert {k: str(v.dtype) for k, v in outputs.items()} == {k: "float32" for k in outputs}
    hidden = jax.make_jaxpr(lambda v, x: model.apply(v, x, image_shape))(variables, images)
    assert "bf16" in str(hidden), "the network itself must compute in bfloat16"
    batch = dict(image=images, boxes=jnp.asarray([[[8.0, 8.0, 40.0, 40.0]]] * 2), labels=jnp.zeros((2, 1), jnp.int32),
                 box_mask=jnp.ones((2, 1), bool), image_shape=image_shape, example_mask=jnp.ones((2,), bool))
    total, terms = step_lib.batch_loss(outputs, batch, config)
    assert total.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in terms.values())
    dets = decode.decode_outputs(outputs, image_shape, image_hw=(64, 64), config=config)
    assert dets["boxes"].dtype == jnp.float32 and dets["scores"].dtype == jnp.float32


def test_group_norm_statistics_are_float32_under_bfloat16():
    """Channels with a large mean and a small spread: bfloat16 statistics would lose the variance entirely."""
    x = (30.0 + np.random.default_rng(0).normal(0, 0.25, (2, 8, 8, 8))).astype(jnp.bfloat16)
    norm = group_norm(2, jnp.bfloat16)
    params = norm.init(jax.random.PRNGKey(0), x)
    got = np.asarray(norm.apply(params, x), np.float32)
    exact = np.asarray(nn.GroupNorm(num_groups=2, epsilon=1e-5, use_fast_variance=False).apply(
        params, jnp.asarray(x, jnp.float32)))
    assert np.abs(got - exact).max() < 0.05                 # bfloat16 rounding of a unit-variance output
