"""The Python API: load a trained workdir and detect objects in uint8 images.

    detector = Detector.from_workdir("runs/r50")
    [result] = detector.predict([image])        # image: uint8 [H, W, 3] RGB
    result["boxes"], result["scores"], result["labels"], result["names"]

Images go through the evaluation pipeline's test transform (keep-ratio resize to `data.test_short_size` /
`data.max_size`, padding to a multiple of `data.bucket_divisor`), the jitted network + decoding (`Predictor`), and the
boxes come back in pixels of the original image.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from date_jax import checkpoints, decode, draw
from date_jax.data import buckets, transforms
from date_jax.models import detector
from date_jax.predictor import Predictor


def _category_names(config: Any) -> list[str]:
    """Class names from the validation annotations when they can be read, else 'class <i>'."""
    from date_jax.data import pipeline
    try:
        names = list(pipeline.dataset_info(config, "val").category_names)
    except (OSError, ValueError, KeyError):
        names = []
    if len(names) != config.model.num_classes:
        names = [f"class {i}" for i in range(config.model.num_classes)]
    return names


class Detector:
    """A DATE model with its variables; `predict` maps images to boxes in original pixels."""

    def __init__(self, config: Any, variables: Any, category_names: Sequence[str] | None = None):
        """`config`: the full ConfigDict; `variables`: {'params', 'batch_stats'} for the model it builds."""
        self.config = config
        self.variables = variables
        self.category_names = list(category_names) if category_names else _category_names(config)
        self._scales = transforms.scales_from_config(config.data)
        self._predictor = Predictor(config).load(variables)
        self.model = self._predictor.model

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None, config: Any = None) -> "Detector":
        """Load checkpoint `step` (None: latest) of `workdir` with its saved config (or `config`)."""
        config = config if config is not None else checkpoints.load_config(workdir)
        _, variables = checkpoints.restore_variables(workdir, step, detector.abstract_variables(config))
        return cls(config, variables)

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [h, w, 3] -> (padded batch-1 image [1, H, W, 3], image_shape [1, 2], scale [1, 2])."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"predict expects uint8 RGB images [H, W, 3]; got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        plan = transforms.plan_test(np.array([h]), np.array([w]), self._scales)
        out_hw = plan.out_hw[0]
        bucket = buckets.bucket_shapes(out_hw[None], self._scales.test_short, self._scales.max_size,
                                       self.config.data.bucket_divisor)[0]
        padded = transforms.transform_image(np.ascontiguousarray(image), False, plan.resize_hw[0], plan.crop[0],
                                            out_hw, bucket)[None]
        scale = (out_hw / np.array([h, w], np.float32)).astype(np.float32)
        return padded, out_hw[None].astype(np.int32), scale[None]

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """Per image: boxes [K, 4] xyxy in original pixels, scores [K], labels [K] (0..C-1), names [K], best first."""
        results = []
        for image in images:
            padded, image_shape, scale = self._prepare(image)
            dets = self._predictor(padded, image_shape)
            keep = dets["valid"][0]
            boxes = decode.rescale_boxes(dets["boxes"][:1], scale)[0][keep]
            labels = dets["labels"][0][keep]
            results.append(dict(boxes=boxes, scores=dets["scores"][0][keep], labels=labels,
                                names=[self.category_names[int(c)] for c in labels]))
        return results

    def draw(self, image: np.ndarray, result: dict[str, Any], score_thr: float = 0.3) -> np.ndarray:
        """`image` with the predictions of `result` scoring >= score_thr drawn on it (uint8 [H, W, 3])."""
        shown = result["scores"] >= score_thr
        return draw.draw_boxes(image, result["boxes"][shown], labels=result["labels"][shown],
                               scores=result["scores"][shown], names=self.category_names)
