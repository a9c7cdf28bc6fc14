"""One training step on device: normalise -> network -> per-example targets -> DATE loss -> grads -> clip -> AdamW.

The step is a pure function of (state, batch). It owns the sharding of its per-example work: the targets of both
branches are computed once, under one `stop_gradient`, inside `sharding.per_example` (a `shard_map` over the `data`
axis), so the solver's loops run on the device that holds the example and contain no collective. The losses are pure
functions of (outputs, batch, targets, weights). A step whose loss or gradients are not finite leaves the state
untouched and says so in its metrics (`finite`); the loop stops the run when it sees that.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from date_jax import losses, sharding
from date_jax.assign import targets as targets_lib
from date_jax.train.optimizer import Optimizer

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


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


def batch_targets(outputs: dict[str, jax.Array], batch: Batch, config: ml_collections.ConfigDict,
                  mesh: Mesh | None, geometry: targets_lib.Geometry | None = None) -> dict[str, jax.Array]:
    """Targets [B, ...] of every example (detached from the graph), each computed on the device that holds it;
    `geometry`: the priors of the batch's padded size (derived from it when not given)."""
    if geometry is None:
        geometry = targets_lib.geometry(config, tuple(int(d) for d in batch["image"].shape[1:3]))

    def one_example(example_outputs, gt):
        return targets_lib.example_targets(example_outputs, gt, geometry, config)

    detached = jax.lax.stop_gradient({k: v.astype(jnp.float32) for k, v in outputs.items()})
    return sharding.per_example(one_example, mesh)(detached, targets_lib.batch_ground_truth(batch))


def _loss_and_targets(outputs: dict[str, jax.Array], batch: Batch, config: ml_collections.ConfigDict,
                      mesh: Mesh | None) -> tuple[jax.Array, Metrics, dict[str, jax.Array]]:
    """(total loss, weighted terms, targets) of a batch: its per-example targets, then the pure loss terms."""
    geometry = targets_lib.geometry(config, tuple(int(d) for d in batch["image"].shape[1:3]))
    targets = batch_targets(outputs, batch, config, mesh, geometry)
    return *losses.date_loss(outputs, batch, targets, config.loss, geometry.grid.points), targets


def batch_loss(outputs: dict[str, jax.Array], batch: Batch, config: ml_collections.ConfigDict,
               mesh: Mesh | None = None) -> tuple[jax.Array, Metrics]:
    """The DATE loss of a batch (total, weighted terms)."""
    total, terms, _ = _loss_and_targets(outputs, batch, config, mesh)
    return total, terms


def assignment_metrics(targets: dict[str, jax.Array], batch: Batch) -> Metrics:
    """Per-image counts worth watching: `o2o_outside_prior`, gts matched outside their own centre prior (POTO)."""
    if "o2o_outside_prior" not in targets:
        return {}
    images = jnp.maximum(jnp.sum(batch["example_mask"]), 1)
    return {"o2o_outside_prior": jnp.sum(targets["o2o_outside_prior"]).astype(jnp.float32) / images}


def _all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf of `tree` is finite -> bool []."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def trainable_leaves(grads: Any, optimizer: Optimizer) -> list[jax.Array]:
    """The leaves of `grads` that the optimizer trains (frozen ones left out)."""
    return [g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(optimizer.trainable)) if t]


def guarded_update(state: TrainState, grads: Any, loss: jax.Array,
                   optimizer: Optimizer) -> tuple[Any, Any, jax.Array, jax.Array]:
    """One optimizer update that is applied only when the loss, every trainable gradient and every update are finite
    -> (params, opt_state, finite [], grads_finite []); otherwise params and optimizer state come back unchanged.
    (Checked before the update: clipping by the global norm would spread one inf over every parameter.)"""
    updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
    grads_finite = _all_finite(trainable_leaves(grads, optimizer))
    finite = jnp.isfinite(loss) & grads_finite & _all_finite(updates)
    params = jax.tree.map(lambda p, u: jnp.where(finite, p + u, p), state.params, updates)
    opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    return params, opt_state, finite, grads_finite


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, optimizer: Optimizer,
               config: ml_collections.ConfigDict, mesh: Mesh | None) -> tuple[TrainState, Metrics]:
    """Loss, gradients and one optimizer update -> (new state, scalar metrics)."""
    def loss_fn(params):
        outputs = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                              batch["image_shape"])
        total, terms, targets = _loss_and_targets(outputs, batch, config, mesh)
        return total, (terms, assignment_metrics(targets, batch))

    (loss, (terms, assigned)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, finite, grads_finite = guarded_update(state, grads, loss, optimizer)
    metrics = {"loss": loss, **terms, **assigned, "grad_norm": optax.tree.norm(trainable_leaves(grads, optimizer)),
               "param_norm": optax.tree.norm(params), "lr": optimizer.schedule(state.step),
               "finite": finite.astype(jnp.float32), "grads_finite": grads_finite.astype(jnp.float32),
               "num_gt": jnp.sum(batch["box_mask"] & batch["example_mask"][:, None]).astype(jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
