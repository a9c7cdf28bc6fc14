"""XLA compiler options for the detector's jitted functions: on the CPU, convolutions and dots run on XLA's Eigen
kernels instead of YNNPACK.

On the 2-core CPU host of benchmarks/README.md, XLA 0.10's default routes convolutions to YNNPACK, which made DATE-R50-F
inference at 512x512 ~20 % slower than Eigen and the train step ~6 % slower (interleaved A/B in one process). The
options go to `jax.jit(..., compiler_options=...)`, so they touch only date-jax's own executables. GPUs and TPUs get
none. Set DATE_JAX_CPU_KERNELS=ynnpack to keep XLA's default; a `ynn_fusion_type` in XLA_FLAGS also wins. On a jaxlib
that does not know the option, a one-off probe compile fails and the defaults stay.
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


def for_backend(backend: str | None = None) -> dict[str, str]:
    """The `compiler_options` for jitting on `backend` (the default backend when None): {} except on the CPU."""
    if (backend or jax.default_backend()) != "cpu":
        return {}
    if os.environ.get("DATE_JAX_CPU_KERNELS", "eigen") == "ynnpack":
        return {}
    if "ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS) if _cpu_options_supported() else {}
