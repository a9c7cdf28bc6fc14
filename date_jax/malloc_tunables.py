"""Opt-in glibc malloc tunables for CPU runs of large models: keep XLA's big buffers mapped, on huge pages.

XLA's CPU client allocates an executable's temporaries with posix_memalign on every call (1.9 GB for a DATE-R50 train
step at 512x512, batch 2). Allocated from a worker thread's arena, a block that large is always a fresh mmap, so every
step faults in ~460k 4 KiB pages and unmaps them again: 1-3 s of kernel time per step on the 2-core benchmark host.
With one arena, no mmap and no trimming, freed blocks stay in the heap for the next call, and `hugetlb=1` backs the heap
with transparent huge pages: the R50 step took ~15 % less time. But one arena serialises malloc across threads: the
demo (a small model fed by tf.data) trained ~20 % slower and the input pipeline lost wall-clock throughput
(benchmarks/README.md has the figures). So it is opt-in: DATE_JAX_MALLOC_TUNABLES=1. glibc reads GLIBC_TUNABLES only at
start-up, so the entry points call `reexec_with_tunables()` first: when opted in, it restarts the same command once
with the tunables. Hosts that run JAX on a GPU or TPU, a GLIBC_TUNABLES that already sets a glibc.malloc tunable, and
platforms other than Linux with glibc are left alone.
"""
from __future__ import annotations

import os
import pkgutil
import platform
import sys

TUNABLES = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=1099511627776",
            "glibc.malloc.hugetlb=1")


ACCELERATOR_PLUGINS = ("jax_cuda", "jax_rocm", "libtpu")   # module-name prefixes of JAX's GPU/TPU plugins


def accelerator_expected() -> bool:
    """True if JAX will run on a GPU or TPU here: JAX_PLATFORMS names one first, or (unset) a plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    return any(module.name.startswith(ACCELERATOR_PLUGINS) for module in pkgutil.iter_modules())


def wanted() -> bool:
    """True if DATE_JAX_MALLOC_TUNABLES=1 and this glibc process will run JAX on the CPU with no malloc tunables of its
    own."""
    return (sys.platform.startswith("linux") and bool(sys.executable) and platform.libc_ver()[0] == "glibc"
            and os.environ.get("DATE_JAX_MALLOC_TUNABLES", "0") == "1"
            and "glibc.malloc." not in os.environ.get("GLIBC_TUNABLES", "")
            and not accelerator_expected())


def reexec_with_tunables() -> None:
    """Replace this process by the same command line with `TUNABLES` appended to GLIBC_TUNABLES (once; a no-op unless
    `wanted()`). Call it first thing in an entry point: nothing done before it survives."""
    if not wanted():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), *TUNABLES]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
