"""Shared pytest settings: quiet TensorFlow, keep JAX on the CPU and deterministic, and apply date-jax's runtime
switch once (as every entry point does), so in-process tests run the CPU-tuned path; tests/runtime/ covers the
stock path."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from date_jax import runtime  # noqa: E402

runtime.configure(tensorflow=False)
