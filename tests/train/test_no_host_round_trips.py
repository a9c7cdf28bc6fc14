"""No host round trips inside the step or the predictor: steady-state train steps and predictions run under
`jax.transfer_guard("disallow")`, and neither lowered module holds a host callback (a device->host->device trip
that would stall an accelerator)."""
import jax
import numpy as np

from date_jax import sharding
from date_jax.models import detector
from date_jax.predictor import Predictor
from date_jax.train import setup
from tests.train.sharded_training_worker import SIZE, fixed_batch, tiny_config

CALLBACK_MARKERS = ("callback", "host_compute", "outfeed", "infeed")


def _callbacks(text: str) -> list[str]:
    return [line.strip()[:160] for line in text.splitlines() if any(m in line.lower() for m in CALLBACK_MARKERS)]


def test_train_step_and_predict_stay_on_device():
    config = tiny_config("fcos")
    mesh = sharding.make_mesh(jax.devices()[:1])
    variables = jax.device_get(detector.init_variables(detector.build_model(config), jax.random.PRNGKey(0),
                                                       (SIZE, SIZE)))
    run = setup.create_training(config, mesh, 0, variables)
    batch = sharding.device_put_batch(fixed_batch(), mesh)
    assert not _callbacks(run.step_fn.lower(run.state, batch).as_text())
    state, _ = run.step_fn(run.state, batch)                  # compile and warm up outside the guard
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            state, metrics = run.step_fn(state, batch)
        jax.block_until_ready(metrics)
    assert np.isfinite(float(metrics["loss"]))

    predictor = Predictor(config).load(variables)
    images, image_shape = batch["image"][:2], batch["image_shape"][:2]
    device_variables = jax.device_put(variables)
    assert not _callbacks(predictor._predict.lower(device_variables, images, image_shape).as_text())
    jax.block_until_ready(predictor._predict(device_variables, images, image_shape))
    with jax.transfer_guard("disallow"):
        detections = predictor._predict(device_variables, images, image_shape)
        jax.block_until_ready(detections)
    assert detections["boxes"].shape == (2, config.test.max_per_img, 4)


def test_the_callback_check_sees_a_host_callback():
    """Negative control: a jitted function with a host callback is reported."""
    def noisy(x):
        jax.debug.callback(lambda v: None, x)
        return x + 1
    assert _callbacks(jax.jit(noisy).lower(np.float32(1.0)).as_text())
