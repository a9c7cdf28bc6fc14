"""The one training-setup factory: (config, mesh, number of training images) -> model, optimiser, sharded state and
the jitted step. The training loop, the benchmarks, the tools and the tests all build a run through it.

The model's convolution and the step's compiler options come from `date_jax.runtime` (stock JAX unless a CPU host
turned its tuning on); the state is replicated over the mesh and donated to the step; the batch is sharded on `data`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from date_jax import runtime, sharding
from date_jax.assign import targets as targets_lib
from date_jax.convert import pretrained
from date_jax.models import detector
from date_jax.train import optimizer as optimizer_lib
from date_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Training:
    """What a training run is made of; `state` is the step-0 state replicated over the mesh."""

    model: nn.Module
    optimizer: optimizer_lib.Optimizer
    state: step_lib.TrainState
    step_fn: step_lib.StepFn


def fresh_variables(config: ml_collections.ConfigDict, model: nn.Module) -> dict[str, Any]:
    """Initialised (and, when `config.init_from` says so, pretrained) model variables as host numpy arrays."""
    size = 2 * max(config.model.strides)
    variables = detector.init_variables(model, jax.random.PRNGKey(config.seed), (size, size))
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    return pretrained.apply_init_from(config, variables)


def replicated_state(variables: dict[str, Any], tx: Any, mesh: Mesh) -> step_lib.TrainState:
    """A step-0 TrainState replicated over `mesh`, from host variables (the same on every process)."""
    variables = sharding.replicate_tree(variables, mesh)
    return jax.jit(lambda v: step_lib.create_state(v, tx), out_shardings=sharding.replicated(mesh))(variables)


def jit_step(model: nn.Module, optimizer: optimizer_lib.Optimizer, config: ml_collections.ConfigDict,
             mesh: Mesh) -> step_lib.StepFn:
    """`train_step` jitted over `mesh`: state replicated and donated, batch sharded on `data`."""
    step_fn = functools.partial(step_lib.train_step, model=model, optimizer=optimizer, config=config, mesh=mesh)
    return jax.jit(step_fn, donate_argnums=(0,),
                   in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                   compiler_options=runtime.compiler_options())


def create_training(config: ml_collections.ConfigDict, mesh: Mesh, num_train_images: int,
                    variables: dict[str, Any] | None = None) -> Training:
    """Model, optimiser, replicated step-0 state (from `variables`, or fresh ones) and the jitted step of `config`."""
    targets_lib.check_assigners(config)
    model = detector.build_model(config, runtime.conv_op())
    if variables is None:
        variables = fresh_variables(config, model)
    optimizer = optimizer_lib.make_optimizer(config, variables["params"], num_train_images)
    state = replicated_state(variables, optimizer.tx, mesh)
    return Training(model, optimizer, state, jit_step(model, optimizer, config, mesh))
