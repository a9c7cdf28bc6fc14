"""Where arrays live: the one-axis `data` mesh over every device of every process, and the batch/state shardings.

This module is the only place that decides sharding (big_vision style): parameters and optimizer state are replicated,
every batch array is split along its leading (example) axis.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Batch keys that stay on the host (ids are only needed to write results).
HOST_ONLY_KEYS = ("image_id",)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Join the other processes of a multi-host job, from explicit flags or the cluster environment (TPU, SLURM, MPI)."""
    if jax.distributed.is_initialized():
        return
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return
    cluster_markers = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    ompi_size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") + 1
    if any(k in os.environ for k in cluster_markers) and max(slurm_tasks, ompi_size, tpu_hosts) > 1:
        jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


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
