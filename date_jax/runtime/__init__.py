"""Backend tuning in one place, behind one switch: what date-jax changes when JAX runs on a CPU host.

On a CPU host (no GPU/TPU plugin, or JAX_PLATFORMS=cpu) with the switch on (the default), date-jax
  - keeps XLA's per-call temporaries in the heap and dispatches synchronously (`cpu_heap`),
  - compiles its executables with XLA's Eigen kernels instead of YNNPACK (`xla_options`),
  - builds models whose convolutions take their kernel gradient as matmuls (`conv_grad`, injected by `conv_op()`).
GPU and TPU hosts, and DATE_JAX_CPU_TUNING=0, get stock JAX. `configure()` is called once by the entry bootstrap
(`date_jax.cli.run`) before JAX creates its client; library users call it themselves (or not: the defaults are stock).
Every entry point also hides the accelerators from TensorFlow, which only reads files here.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

from jax import lax

from date_jax.runtime import conv_grad, cpu_heap, xla_options

SWITCH = "DATE_JAX_CPU_TUNING"
ConvOp = Callable[..., Any]

_state = {"tuned": False}


def cpu_tuning_wanted() -> bool:
    """True when this host will run JAX on the CPU and DATE_JAX_CPU_TUNING is not '0'."""
    return os.environ.get(SWITCH, "1") != "0" and not cpu_heap.accelerator_expected()


def _import_tensorflow_quietly() -> Any:
    """`import tensorflow` with the C++ start-up lines it prints before any log setting applies (oneDNN, absl's
    InitializeLog warning) sent to /dev/null; Python errors still surface."""
    stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
    return tf


def configure(tensorflow: bool = True) -> bool:
    """Apply the backend tuning once, before JAX creates its client; returns whether the CPU tuning is on.
    With `tensorflow`, also hide GPUs from TensorFlow (the input pipeline's tf.data must not claim them)."""
    if tensorflow and importlib.util.find_spec("tensorflow") is not None:
        tf = _import_tensorflow_quietly()
        try:
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):   # TF already initialised its devices: too late, and harmless here
            pass
    _state["tuned"] = cpu_tuning_wanted()
    if _state["tuned"]:
        cpu_heap.retain_freed_memory()
    return _state["tuned"]


def cpu_tuned() -> bool:
    """True once `configure()` turned the CPU tuning on in this process."""
    return _state["tuned"]


def conv_op() -> ConvOp:
    """The convolution the models are built with: matmul kernel gradients when tuned, else `lax`'s own."""
    return conv_grad.conv_general_dilated if cpu_tuned() else lax.conv_general_dilated


def compiler_options() -> dict[str, str]:
    """`compiler_options` for jitting date-jax's executables: the Eigen kernels when tuned, else none."""
    return xla_options.cpu_options() if cpu_tuned() else {}
