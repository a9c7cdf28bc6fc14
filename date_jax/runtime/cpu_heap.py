"""Keep XLA's per-call CPU temporaries in the heap, so a train step does not map and fault them in afresh every call.

XLA's CPU client allocates an executable's temporaries with posix_memalign on every call (gigabytes for a DATE-R50
train step). glibc serves a block that large by a fresh mmap and unmaps it on free, so every step faults its pages in
again (benchmarks/README.md has the measured cost). `retain_freed_memory()` stops that: mallopt(M_MMAP_MAX=0) serves
large blocks from the heap, mallopt(M_TRIM_THRESHOLD=SIZE_MAX) never returns the heap's top to the kernel, and
synchronous CPU dispatch runs executables on the calling (main) thread, whose arena is the one that grows by brk; a
worker thread's arena falls back to mmap for blocks over 64 MB whatever mallopt says. The cost: the process keeps its
peak heap until it exits, and Python waits for each step.
"""
from __future__ import annotations

import ctypes
import os
import pkgutil
import platform
import sys

M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's <malloc.h>
M_MMAP_MAX = -4
SIZE_MAX = -1           # mallopt takes an int; glibc stores the trim threshold as size_t, so -1 means "never trim"
ACCELERATOR_PLUGINS = ("jax_cuda", "jax_rocm", "libtpu")   # module-name prefixes of JAX's GPU/TPU plugins


def accelerator_expected() -> bool:
    """True if JAX will run on a GPU or TPU here: JAX_PLATFORMS names one first, or (unset) a plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    return any(module.name.startswith(ACCELERATOR_PLUGINS) for module in pkgutil.iter_modules())


def glibc_linux() -> bool:
    """True on Linux with glibc, where mallopt has these parameters."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def retain_freed_memory() -> bool:
    """Set glibc's mallopt so freed large blocks stay in the heap, and make JAX's CPU dispatch synchronous; returns
    whether it did. Call it before JAX creates its CPU client (the first device use), which reads the dispatch
    setting once."""
    if not glibc_linux():
        return False
    import jax

    libc = ctypes.CDLL(None)
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, SIZE_MAX) != 1:
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
