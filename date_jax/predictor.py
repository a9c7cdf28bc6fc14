"""The predictor: jitted network + NMS-free decoding of one model, data-parallel over this process's devices.

This is the bottom of the prediction stack: evaluation (`date_jax.evaluation`), the Python API
(`date_jax.inference.Detector`) and the benchmarks all predict through it, so they run one executable. It imports
the model, the decoder and the runtime's backend choices, nothing of training, checkpoints or data sets.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from date_jax import decode, runtime, sharding
from date_jax.models import detector

Detections = dict[str, np.ndarray]


def host_variables(variables: Any) -> Any:
    """Variables as host numpy arrays, also when they are global arrays of a multi-process mesh (replicated)."""
    def fetch(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(fetch, variables)


class Predictor:
    """`predictor(images uint8 [B,H,W,3], image_shape [B,2])` -> numpy detections (boxes [B,K,4] in resized pixels,
    scores, labels, valid [B,K]) of the variables last given to `load`; the batch is padded to a multiple of the
    local device count, split over this process's devices and unpadded."""

    def __init__(self, config: ml_collections.ConfigDict, model: nn.Module | None = None):
        self.config = config
        self.model = model if model is not None else detector.build_model(config, runtime.conv_op())
        self.mesh = sharding.local_mesh()
        self._replicated = sharding.replicated(self.mesh)
        self._sharded = sharding.batch_sharding(self.mesh)
        self._predict = jax.jit(self._forward, compiler_options=runtime.compiler_options())
        self._variables: Any = None

    def _forward(self, variables: Any, images: jax.Array, image_shape: jax.Array) -> dict[str, jax.Array]:
        """Network + decoding: images uint8 [B,H,W,3], image_shape [B,2] -> detections [B, K, ...]."""
        outputs = self.model.apply(variables, images, image_shape)
        return decode.decode_outputs(outputs, image_shape, image_hw=images.shape[1:3], config=self.config)

    def load(self, variables: Any) -> "Predictor":
        """Place {'params', 'batch_stats'} (host or global arrays) on the local devices for the next predictions."""
        self._variables = jax.device_put(host_variables(variables), self._replicated)
        return self

    def __call__(self, images: np.ndarray, image_shape: np.ndarray) -> Detections:
        if self._variables is None:
            raise RuntimeError("Predictor.load(variables) must be called before predicting")
        batch = images.shape[0]
        pad = -batch % self.mesh.devices.size
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
            image_shape = np.concatenate([image_shape, np.repeat(image_shape[-1:], pad, 0)])
        out = self._predict(self._variables, jax.device_put(np.asarray(images), self._sharded),
                            jax.device_put(np.asarray(image_shape, np.int32), self._sharded))
        return {k: np.asarray(v)[:batch] for k, v in out.items()}
