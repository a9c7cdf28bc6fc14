"""Where arrays live: the one-axis `data` mesh, the batch/state shardings and the per-example `shard_map`.

This module is the only place that decides sharding (big_vision style): parameters and optimizer state are replicated,
every batch array is split along its leading (example) axis. Training uses the mesh over every device of every
process; evaluation predicts per process on the mesh of its local devices. Per-example work inside a jitted function
(label assignment) runs under `per_example`, so each example is processed on the device that holds it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# Batch keys that stay on the host (ids are only needed to write results).
HOST_ONLY_KEYS = ("image_id",)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def local_mesh() -> Mesh:
    """A 1-D mesh named `data` over this process's devices (evaluation predicts per process)."""
    return make_mesh(jax.local_devices())


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch array: the leading (example) axis split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    """Fail early with a clear message when the global batch does not split evenly over devices and processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices or global_batch % processes:
        raise ValueError(
            f"config.data.batch_size={global_batch} must be a multiple of the number of devices ({devices}) and of "
            f"processes ({processes}); set --config.data.batch_size to a multiple of {devices}.")


def device_put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turn this process's share of a batch into global arrays sharded over `data` (host-only keys are dropped)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items() if k not in HOST_ONLY_KEYS}


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree of host arrays on every device (same values on every process)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
                        tree)


def log_layout(mesh: Mesh) -> None:
    """Print the device/process layout once at start."""
    logging.info("JAX %s | processes: %d (this is %d) | devices: %d global, %d local (%s) | mesh %s",
                 jax.__version__, jax.process_count(), jax.process_index(), jax.device_count(),
                 jax.local_device_count(), jax.devices()[0].platform, dict(mesh.shape))


def per_example(fn: Callable[..., Any], mesh: Mesh | None = None) -> Callable[..., Any]:
    """vmap `fn` over the leading batch axis of every argument; on a mesh, run it per shard of the `data` axis."""
    batched = jax.vmap(fn)
    if mesh is None:
        return batched
    # check_vma=False: the solver's loops carry unvarying constants; nothing inside communicates.
    return jax.shard_map(batched, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False)
