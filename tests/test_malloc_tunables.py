"""Opted in, CPU entry points restart once with glibc malloc tunables, after which a large freed block is reused without
page faults; by default, on GPU/TPU hosts and with the user's own tunables nothing changes."""
import os
import platform
import subprocess
import sys

import pytest

from date_jax import malloc_tunables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Starts, restarts itself through reexec_with_tunables, then fills a 256 MB posix_memalign block twice (freed in
# between) from a worker thread, as XLA's CPU client does, and prints the minor page faults of the second fill.
PROBE = """
import ctypes, os, resource, sys, threading
sys.path.insert(0, {root!r})
from date_jax import malloc_tunables
print("start", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
malloc_tunables.reexec_with_tunables()
libc = ctypes.CDLL("libc.so.6")
size = 256 << 20

def fill(out):
    block = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(block), 64, ctypes.c_size_t(size)) == 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)

faults = []
for _ in range(2):
    worker = threading.Thread(target=fill, args=(faults,))
    worker.start()
    worker.join()
print("faults", faults[1], flush=True)
"""


def _probe(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DATE_JAX_MALLOC_TUNABLES")}
    env.update({"JAX_PLATFORMS": "cpu", **env_overrides})
    result = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT)], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    lines = result.stdout.splitlines()
    return [line for line in lines if line.startswith("start")], int(lines[-1].split()[1])


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="needs Linux with glibc (the tunables are glibc's)")
def test_restart_adds_tunables_and_the_second_fill_reuses_pages():
    starts, faults = _probe(DATE_JAX_MALLOC_TUNABLES="1")
    assert len(starts) == 2                              # restarted exactly once
    assert starts[0] == "start "
    assert starts[1] == "start " + ":".join(malloc_tunables.TUNABLES)
    assert faults < 1000                                 # 256 MB in 4 KiB pages would be 65,536 faults

    starts, faults = _probe()
    assert starts == ["start "]                          # the default: no restart
    assert faults > 30000                                # a fresh mmap per block: every page faults again

    starts, _ = _probe(DATE_JAX_MALLOC_TUNABLES="1", GLIBC_TUNABLES="glibc.malloc.check=0")
    assert starts == ["start glibc.malloc.check=0"]      # the user's own malloc tunables win

    starts, _ = _probe(DATE_JAX_MALLOC_TUNABLES="1", JAX_PLATFORMS="cuda,cpu")
    assert starts == ["start "]                          # JAX will run on a GPU: the host buffers are tf.data's


def test_accelerator_expected_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not malloc_tunables.accelerator_expected()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert malloc_tunables.accelerator_expected()
