"""The optimizer against docs/spec.md §2.4: lr schedule by hand, one AdamW step against a numpy re-derivation of
PyTorch's."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from date_jax import config as config_lib
from date_jax.models import detector
from date_jax.train import optimizer


def _config(**schedule):
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config()
    config.schedule.update(schedule)
    return config


@pytest.mark.parametrize("step,expected", [
    (0, 4e-4 * 0.001), (500, 4e-4 * (1 - 0.5 * 0.999)), (999, 4e-4 * (1 - 0.001 * 0.999)), (1000, 4e-4),
    (1999, 4e-4), (2000, 4e-5), (2499, 4e-5), (2500, 4e-6), (2999, 4e-6)])
def test_lr_schedule_warmup_and_steps(step, expected):
    config = _config(num_steps=3000, decay_steps=(2000, 2500))
    assert float(optimizer.lr_schedule(config, 0)(step)) == pytest.approx(expected, rel=1e-6)


def test_lr_scales_with_global_batch_and_epochs_become_steps():
    config = _config(epochs=12, decay_epochs=(8, 11))
    config.data.batch_size = 32
    assert config_lib.learning_rate(config) == pytest.approx(8e-4)
    assert config_lib.total_steps(config, 3200) == 1200
    assert config_lib.decay_boundaries(config, 3200) == (800, 1100)
    assert float(optimizer.lr_schedule(config, 3200)(1100)) == pytest.approx(8e-6, rel=1e-6)


def _numpy_adamw_first_step(params, grads, groups, config, lr):
    """PyTorch AdamW's first step with clip_grad_norm_ over trainable params, written out in numpy."""
    o = config.optim
    trainable = {k: g for k, g in grads.items() if groups[k] != optimizer.FROZEN}
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in trainable.values()))
    clip = min(1.0, o.clip_norm / norm)
    out = {}
    for k, p in params.items():
        if groups[k] == optimizer.FROZEN:
            out[k] = p
            continue
        g = grads[k] * clip
        m_hat = (1 - o.b1) * g / (1 - o.b1)
        v_hat = (1 - o.b2) * g * g / (1 - o.b2)
        group_lr = lr * (o.backbone_lr_mult if groups[k] == optimizer.BACKBONE else 1.0)
        out[k] = p - group_lr * (m_hat / (np.sqrt(v_hat) + o.eps) + o.weight_decay * p)
    return out


def test_one_step_matches_pytorch_adamw_and_freezes_stem_and_stage1():
    config = _config(num_steps=100, decay_steps=())
    config.optim.warmup_steps = 1
    model = detector.build_model(config)
    params = detector.init_variables(model, jax.random.PRNGKey(0), (64, 64))["params"]
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    rng = np.random.default_rng(0)
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat.items()}
    groups = traverse_util.flatten_dict(optimizer.param_groups(params, config))
    assert groups[("backbone", "conv1", "kernel")] == optimizer.FROZEN
    assert any(k[1].startswith("layer1") and g == optimizer.FROZEN for k, g in groups.items())
    assert any(k[1].startswith("layer2") and g == optimizer.BACKBONE for k, g in groups.items())
    assert all(g == optimizer.HEAD for k, g in groups.items() if k[0] != "backbone")

    tx = optimizer.make_optimizer(config, params, 0).tx
    state = tx.init(params)
    updates, _ = tx.update(traverse_util.unflatten_dict(grads), state, params)
    new = traverse_util.flatten_dict(jax.tree.map(lambda p, u: p + u, params, updates))
    lr = float(optimizer.lr_schedule(config, 0)(0))
    expected = _numpy_adamw_first_step(flat, grads, groups, config, lr)
    for k in flat:
        np.testing.assert_allclose(np.asarray(new[k]), expected[k], rtol=1e-5, atol=1e-9, err_msg=str(k))
        if groups[k] == optimizer.FROZEN:
            np.testing.assert_array_equal(np.asarray(new[k]), flat[k])
