"""Keep XLA's per-call CPU temporaries in the heap, so a train step does not map and fault in 1.9 GB afresh.

XLA's CPU client allocates an executable's temporaries with posix_memalign on every call (1.9 GB for a DATE-R50 train
step at 512x512, batch 2). glibc serves a block that large by a fresh mmap and unmaps it on free, so every step faults
in ~460k 4 KiB pages: 1-1.5 s of kernel time per step on the 2-core benchmark host. `retain_freed_memory()` stops
that for JAX on the CPU: mallopt(M_MMAP_MAX=0) serves large blocks from the heap, mallopt(M_TRIM_THRESHOLD=SIZE_MAX)
never returns the heap's top to the kernel, and synchronous CPU dispatch runs executables on the calling (main)
thread, whose arena is the one that grows by brk; a worker thread's arena falls back to mmap for blocks over 64 MB
whatever mallopt says. The cost: the process keeps its peak heap until it exits, and Python waits for each step.
GPU/TPU hosts, non-glibc platforms and DATE_JAX_RETAIN_HEAP=0 are left alone.
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


def applies() -> bool:
    """True on Linux with glibc when JAX will run on the CPU and DATE_JAX_RETAIN_HEAP is not 0."""
    return (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
            and os.environ.get("DATE_JAX_RETAIN_HEAP", "1") != "0" and not accelerator_expected())


def retain_freed_memory() -> bool:
    """Set glibc's mallopt so freed large blocks stay in the heap, and make JAX's CPU dispatch synchronous; returns
    whether it did (see `applies()`). Call it before JAX creates its CPU client (the first device use), which reads
    the dispatch setting once."""
    if not applies():
        return False
    import jax

    libc = ctypes.CDLL(None)
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, SIZE_MAX) != 1:
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
