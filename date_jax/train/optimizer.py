"""The reference optimiser (docs/spec.md §2.4): AdamW, backbone lr x0.1, global-norm clip, warm-up then step decay.

Frozen parameters (stem and the first `frozen_stages` stages) get zero gradients before clipping and zero updates, so
they neither move nor decay; BatchNorm lives outside `params` and is never seen here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from date_jax import config as config_lib
from date_jax.models import detector

FROZEN, BACKBONE, HEAD = "frozen", "backbone", "head"


def lr_schedule(config: config_lib.ConfigDict, num_train_images: int) -> optax.Schedule:
    """Peak lr x (linear warm-up from `warmup_ratio`) x gamma^(number of decay boundaries passed)."""
    peak = config_lib.learning_rate(config)
    warmup = max(int(config.optim.warmup_steps), 1)
    ratio = float(config.optim.warmup_ratio)
    boundaries = jnp.asarray(config_lib.decay_boundaries(config, num_train_images) or (2**31 - 1,), jnp.int32)
    gamma = float(config.schedule.gamma)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.int32)
        warm = ratio + (1.0 - ratio) * jnp.minimum(step, warmup) / warmup  # = 1 - (1 - step/warmup)(1 - ratio)
        decays = jnp.sum(step >= boundaries)
        return peak * warm * gamma ** decays.astype(jnp.float32)

    return schedule


def param_groups(params: Any, config: config_lib.ConfigDict) -> Any:
    """Label every parameter 'frozen', 'backbone' or 'head' (same tree structure as params)."""
    trainable = detector.trainable_mask(params, config)
    in_backbone = detector.backbone_mask(params)
    return jax.tree.map(lambda t, b: HEAD if t and not b else (BACKBONE if t else FROZEN), trainable, in_backbone)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimiser of a run: the transformation, its lr schedule and which parameters it trains (bool tree)."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    trainable: Any


def make_optimizer(config: config_lib.ConfigDict, params: Any, num_train_images: int) -> Optimizer:
    """AdamW with per-group lr, decoupled weight decay on every trainable param, clip by global norm."""
    schedule = lr_schedule(config, num_train_images)
    groups = param_groups(params, config)
    frozen = jax.tree.map(lambda g: g == FROZEN, groups)
    o = config.optim

    def adamw(lr_mult: float) -> optax.GradientTransformation:
        return optax.adamw(lambda step: schedule(step) * lr_mult, b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay)

    tx = optax.chain(
        optax.masked(optax.set_to_zero(), frozen),
        optax.clip_by_global_norm(o.clip_norm),
        optax.multi_transform({FROZEN: optax.set_to_zero(), BACKBONE: adamw(o.backbone_lr_mult), HEAD: adamw(1.0)},
                              groups),
    )
    return Optimizer(tx, schedule, jax.tree.map(lambda g: g != FROZEN, groups))
