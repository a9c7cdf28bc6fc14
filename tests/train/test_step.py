"""The update guard of the train step: a non-finite gradient (with a finite loss) leaves the parameters and the
optimizer state bit-identical and says so; a finite one updates them."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from date_jax import config as config_lib
from date_jax.models import detector
from date_jax.train import optimizer as optimizer_lib
from date_jax.train import step as step_lib


def _state_and_grads():
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes=3)
    config.optim.warmup_steps = 1
    variables = detector.init_variables(detector.build_model(config), jax.random.PRNGKey(0), (64, 64))
    optim = optimizer_lib.make_optimizer(config, variables["params"], 100)
    state = step_lib.create_state(variables, optim.tx)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), variables["params"])
    return state, grads, optim


def test_an_inf_gradient_with_a_finite_loss_leaves_the_state_unchanged():
    state, grads, optim = _state_and_grads()
    flat = traverse_util.flatten_dict(grads)
    key = ("bbox_head", "predictors_0", "conv_cls", "kernel")
    flat[key] = flat[key].at[0, 0, 0, 0].set(jnp.inf)
    params, opt_state, finite, grads_finite = step_lib.guarded_update(
        state, traverse_util.unflatten_dict(flat), jnp.float32(1.5), optim)
    assert not bool(finite) and not bool(grads_finite)
    for new, old in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_finite_gradients_update_the_trainable_parameters():
    state, grads, optim = _state_and_grads()
    params, _, finite, grads_finite = step_lib.guarded_update(state, grads, jnp.float32(1.5), optim)
    assert bool(finite) and bool(grads_finite)
    moved = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params))]
    assert any(moved) and not all(moved)              # the frozen stem and stage 1 stay where they are
