"""One training step on device: normalise -> network -> assignment -> DATE loss -> grads -> clip -> AdamW.

No TensorFlow here. The step is a pure function of (state, batch); `make_train_step` jits it over the mesh with the
state replicated and donated and the batch sharded on `data`. Assignment runs per example inside `jax.shard_map`
(see `date_jax.assign.targets`), so the solver loops contain no collectives.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from date_jax import compiler_options
from date_jax import config as config_lib
from date_jax import losses
from date_jax.train import sharding


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: step, trainable params, frozen BatchNorm variables, optimizer state."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_state(variables: dict[str, Any], tx: optax.GradientTransformation) -> TrainState:
    """A step-0 state from model variables."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(variables["params"]))


def replicated_state(variables: dict[str, Any], tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """A step-0 TrainState replicated over `mesh`, from host variables (the same on every process)."""
    variables = sharding.replicate_tree(variables, mesh)
    return jax.jit(lambda v: create_state(v, tx), out_shardings=sharding.replicated(mesh))(variables)


def tree_norm(tree: Any) -> jax.Array:
    """Global L2 norm of a pytree -> []."""
    return optax.tree.norm(tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, tx: optax.GradientTransformation,
               config: config_lib.ConfigDict, schedule: Callable[[jax.Array], jax.Array], mesh: Mesh | None,
               trainable: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """Loss, gradients and one optimizer update -> (new state, scalar metrics)."""

    def loss_fn(params):
        outputs = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                              batch["image_shape"])
        return losses.date_loss(outputs, batch, config, mesh=mesh)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    trainable_grads = [g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable)) if t]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    finite = jnp.isfinite(loss)
    # A non-finite loss leaves the state untouched; the loop stops the run when it sees the flag.
    params = jax.tree.map(lambda p, u: jnp.where(finite, p + u, p), state.params, updates)
    opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    metrics = {"loss": loss, **terms, "grad_norm": tree_norm(trainable_grads), "param_norm": tree_norm(params),
               "lr": schedule(state.step), "finite": finite.astype(jnp.float32),
               "num_gt": jnp.sum(batch["box_mask"] & batch["example_mask"][:, None]).astype(jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: config_lib.ConfigDict,
                    schedule: Callable[[jax.Array], jax.Array], mesh: Mesh, trainable: Any
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step` jitted over `mesh`: state replicated and donated, batch sharded on `data`."""
    step_fn = functools.partial(train_step, model=model, tx=tx, config=config, schedule=schedule, mesh=mesh,
                                trainable=trainable)
    return jax.jit(step_fn, donate_argnums=(0,),
                   in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                   out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                   compiler_options=compiler_options.for_backend())
