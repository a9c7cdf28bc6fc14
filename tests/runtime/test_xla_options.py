"""CPU compiler options: convolutions leave YNNPACK for XLA's Eigen kernels in date-jax's executables, and only
there; the runtime switch decides."""
import jax
import jax.numpy as jnp
from jax import lax

from date_jax import runtime
from date_jax.runtime import xla_options


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _compiled_text(options):
    x, w = jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    return jax.jit(_conv, compiler_options=options).lower(x, w).compile().as_text()


def test_cpu_options_route_convolutions_away_from_ynnpack():
    assert jax.default_backend() == "cpu" and runtime.cpu_tuned()
    options = runtime.compiler_options()
    assert options == xla_options.CPU_OPTIONS
    assert "ynn_fusion" in _compiled_text(None)        # XLA's default on this jaxlib
    assert "ynn_fusion" not in _compiled_text(options)


def test_no_options_when_xla_flags_choose(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert xla_options.cpu_options() == {}


def test_train_step_and_predict_are_jitted_with_the_options():
    """The executables the loop and the evaluator build carry the options: no YNNPACK fusion in their HLO, where
    the same predict jitted with XLA's defaults has some."""
    from date_jax import sharding
    from date_jax.models import detector
    from date_jax.predictor import Predictor
    from date_jax.train import setup
    from tests.train.sharded_training_worker import SIZE, fixed_batch, tiny_config

    config = tiny_config("fcos")
    predictor = Predictor(config)
    variables = jax.device_get(detector.init_variables(predictor.model, jax.random.PRNGKey(0), (SIZE, SIZE)))
    images, image_shape = jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8), jnp.full((1, 2), SIZE, jnp.int32)
    predict_text = predictor._predict.lower(variables, images, image_shape).compile().as_text()
    default_text = jax.jit(predictor._forward).lower(variables, images, image_shape).compile().as_text()
    assert "ynn_fusion" in default_text and "ynn_fusion" not in predict_text

    mesh = sharding.make_mesh(jax.devices()[:1])
    run = setup.create_training(config, mesh, 0, variables)
    step_text = run.step_fn.lower(run.state, sharding.device_put_batch(fixed_batch(), mesh)).compile().as_text()
    assert "convolution" in step_text and "ynn_fusion" not in step_text
