"""XLA compiler options for date-jax's executables on the CPU: convolutions and dots run on XLA's Eigen kernels
instead of YNNPACK (measured faster for this detector: benchmarks/README.md). The options go to
`jax.jit(..., compiler_options=...)`, so they touch only date-jax's own executables. A `ynn_fusion_type` in XLA_FLAGS
wins; on a jaxlib that does not know the option, a one-off probe compile fails and the defaults stay.
"""
from __future__ import annotations

import functools
import logging
import os

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}   # no YNNPACK fusions: XLA's Eigen convs and dots


@functools.cache
def _cpu_options_supported() -> bool:
    """True if this jaxlib compiles a trivial function with `CPU_OPTIONS`."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
    except (jax.errors.JaxRuntimeError, TypeError, ValueError) as error:
        logging.warning("XLA CPU options %s are not accepted by this jaxlib (%s); keeping its defaults.",
                        CPU_OPTIONS, error)
        return False
    return True


def cpu_options() -> dict[str, str]:
    """The CPU `compiler_options` ({} when XLA_FLAGS already chooses the fusion type or the jaxlib rejects them)."""
    if "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS) if _cpu_options_supported() else {}
