"""With the heap retained, repeated calls of a jitted function with large temporaries reuse their pages; without it
(DATE_JAX_CPU_TUNING=0) every call faults them in again. GPU/TPU hosts are left alone."""
import os
import platform
import subprocess
import sys

import pytest

from date_jax import runtime
from date_jax.runtime import cpu_heap

# Calls a jitted function whose eight 16 MB intermediates XLA keeps as temporaries (128 MB, 32,768 pages of 4 KiB)
# four times and prints whether the heap was retained and the minor page faults of the last call.
PROBE = """
import resource
from date_jax import runtime
retained = runtime.configure(tensorflow=False)
import jax, jax.numpy as jnp

@jax.jit
def spread(x):
    parts = [jnp.sin(x * i) for i in range(1, 9)]
    return sum(p.sum() for p in parts)

x = jnp.ones((2048, 2048), jnp.float32)
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    spread(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(retained, faults, jax.config.read("jax_cpu_enable_async_dispatch"), flush=True)
"""


def _probe(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k != runtime.SWITCH}
    env.update({"JAX_PLATFORMS": "cpu", **env_overrides})
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    retained, faults, async_dispatch = result.stdout.split()
    return retained == "True", int(faults), async_dispatch == "True"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="needs Linux with glibc (mallopt's M_MMAP_MAX and M_TRIM_THRESHOLD)")
def test_retained_heap_reuses_the_pages_of_large_temporaries():
    retained, faults, async_dispatch = _probe()
    assert retained and not async_dispatch
    assert faults < 2000                    # 128 MB of temporaries would be 32,768 fresh pages

    retained, faults, async_dispatch = _probe(DATE_JAX_CPU_TUNING="0")
    assert not retained and async_dispatch  # opted out: JAX's defaults
    assert faults > 25000                   # a fresh mmap per call: every page faults again


def test_accelerator_hosts_are_left_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not cpu_heap.accelerator_expected() and runtime.cpu_tuning_wanted()
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert cpu_heap.accelerator_expected() and not runtime.cpu_tuning_wanted()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert cpu_heap.accelerator_expected()


SHARDED = """
from date_jax import runtime
assert runtime.configure(tensorflow=False)
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("data")))
total = jax.jit(lambda x: x.sum(0), out_shardings=NamedSharding(mesh, P()))(x)
print(jax.device_count(), *np.asarray(total).astype(int))
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="needs Linux with glibc")
def test_synchronous_dispatch_still_runs_cross_device_reductions():
    """Four CPU devices reduce a sharded array together (a collective that needs all of them running at once)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop(runtime.SWITCH, None)
    result = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.split() == ["4", "112", "120", "128", "136"]   # column sums of arange(32).reshape(8, 4)
