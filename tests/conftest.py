"""Shared pytest settings: quiet TensorFlow, keep JAX on the CPU and deterministic."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
