"""CPU compiler options: convolutions leave YNNPACK for XLA's Eigen kernels in date-jax's executables, and only
there."""
import jax
import jax.numpy as jnp
from jax import lax

from date_jax import compiler_options


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _compiled_text(options):
    x, w = jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    return jax.jit(_conv, compiler_options=options).lower(x, w).compile().as_text()


def test_cpu_options_route_convolutions_away_from_ynnpack():
    assert jax.default_backend() == "cpu"
    options = compiler_options.for_backend()
    assert options == compiler_options.CPU_OPTIONS
    assert "ynn_fusion" in _compiled_text(None)        # XLA's default on this jaxlib
    assert "ynn_fusion" not in _compiled_text(options)


def test_no_options_for_accelerators_or_when_overridden(monkeypatch):
    assert compiler_options.for_backend("gpu") == {}
    assert compiler_options.for_backend("tpu") == {}
    monkeypatch.setenv("DATE_JAX_CPU_KERNELS", "ynnpack")
    assert compiler_options.for_backend() == {}
    monkeypatch.delenv("DATE_JAX_CPU_KERNELS")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert compiler_options.for_backend() == {}


def test_train_step_and_predict_are_jitted_with_the_options():
    """The executables the loop and the evaluator build carry the options: no YNNPACK fusion in their HLO, where
    the same predict jitted with XLA's defaults has some."""
    from date_jax.evaluation import decode
    from date_jax.models import detector
    from date_jax.train import optimizer, sharding
    from date_jax.train import step as step_lib
    from tests.sharded_training_worker import SIZE, fixed_batch, tiny_config

    config = tiny_config("fcos")
    model = detector.build_model(config)
    variables = jax.device_get(detector.init_variables(model, jax.random.PRNGKey(0), (SIZE, SIZE)))
    images, image_shape = jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.full((1, 2), SIZE, jnp.int32)
    predict = decode.make_predict_fn(config, model)
    predict_text = predict.lower(variables, images, image_shape).compile().as_text()
    default_text = jax.jit(predict.__wrapped__).lower(variables, images, image_shape).compile().as_text()
    assert "ynn_fusion" in default_text and "ynn_fusion" not in predict_text

    mesh = sharding.make_mesh(jax.devices()[:1])
    tx = optimizer.make_optimizer(config, variables["params"], 0)
    step = step_lib.make_train_step(model, tx, config, optimizer.lr_schedule(config, 0), mesh,
                                    detector.trainable_mask(variables["params"], config))
    state = step_lib.replicated_state(variables, tx, mesh)
    step_text = step.lower(state, sharding.device_put_batch(fixed_batch(), mesh)).compile().as_text()
    assert "convolution" in step_text and "ynn_fusion" not in step_text
