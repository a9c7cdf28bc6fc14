"""Subprocess worker for tests/train/test_sharding.py: a few DATE train steps on a fixed batch over a mesh.

python tests/train/sharded_training_worker.py --devices K --out params.npz [--coordinator host:port --num_processes P
--process_id I]. Writes the final params (flattened) and per-step losses from process 0.
"""
import argparse

import jax
import numpy as np
from flax import traverse_util

from date_jax import config as config_lib
from date_jax import runtime, sharding
from date_jax.models import detector
from date_jax.train import setup

GLOBAL_BATCH, SIZE, MAX_BOXES, STEPS = 8, 96, 6, 3


def tiny_config(o2m: str) -> config_lib.ConfigDict:
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes=3, o2m=o2m)
    config.data.batch_size = GLOBAL_BATCH
    config.data.max_boxes = MAX_BOXES
    config.optim.warmup_steps = 1
    config.schedule.num_steps = STEPS
    return config


def fixed_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """A global batch with varied box counts (one example empty, one padded out by example_mask)."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros((GLOBAL_BATCH, MAX_BOXES, 4), np.float32)
    mask = np.zeros((GLOBAL_BATCH, MAX_BOXES), bool)
    for b in range(GLOBAL_BATCH):
        n = [0, 1, 3, 6, 2, 4, 5, 1][b]
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(8, 36, (n, 2))
        boxes[b, :n] = np.concatenate([xy, np.minimum(xy + wh, SIZE - 1)], axis=1)
        mask[b, :n] = True
    return {
        "image": rng.integers(0, 256, (GLOBAL_BATCH, SIZE, SIZE, 3), dtype=np.uint8),
        "boxes": boxes, "labels": rng.integers(0, 3, (GLOBAL_BATCH, MAX_BOXES)).astype(np.int32), "box_mask": mask,
        "image_shape": np.full((GLOBAL_BATCH, 2), SIZE, np.int32) - np.arange(GLOBAL_BATCH, dtype=np.int32)[:, None],
        "scale": np.ones((GLOBAL_BATCH, 2), np.float32),
        "example_mask": np.arange(GLOBAL_BATCH) != GLOBAL_BATCH - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True, help="devices of the mesh (global)")
    parser.add_argument("--o2m", default="fcos")
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    runtime.configure(tensorflow=False)
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    config = tiny_config(args.o2m)
    mesh = sharding.make_mesh(jax.devices()[: args.devices])
    variables = jax.device_get(detector.init_variables(detector.build_model(config), jax.random.PRNGKey(0),
                                                       (SIZE, SIZE)))
    run = setup.create_training(config, mesh, 0, variables)
    state, train_step = run.state, run.step_fn
    batch = fixed_batch()
    share = GLOBAL_BATCH // jax.process_count()
    local = {k: v[jax.process_index() * share:(jax.process_index() + 1) * share] for k, v in batch.items()}
    losses = []
    for _ in range(STEPS):
        state, metrics = train_step(state, sharding.device_put_batch(local, mesh))
        losses.append(float(metrics["loss"]))
    params = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), **params)
    print("losses", losses, flush=True)


if __name__ == "__main__":
    main()
