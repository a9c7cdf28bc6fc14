"""The Python API: load a trained workdir and detect objects in uint8 images.

    detector = Detector.from_workdir("runs/r50")
    result = detector.predict(image, score_thr=0.3)     # image: uint8 [H, W, 3] RGB (or a list of them)
    result["boxes"], result["scores"], result["labels"], result["names"], result["category_ids"]

Images go through the evaluation pipeline's test transform (keep-ratio resize to `data.test_short_size` /
`data.max_size`, padding to a multiple of `data.bucket_divisor`), the jitted network + decoding (`Predictor`), and the
boxes come back in pixels of the original image. A list is predicted in batches of images that share a padded shape.
The class names and category ids come from the workdir (`classes.json`, written by training); the data set is never
read, and nothing is written.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from date_jax import checkpoints, decode, draw
from date_jax.data import examples
from date_jax.models import detector
from date_jax.predictor import Predictor


class Detector:
    """A DATE model with its variables; `predict` maps images to boxes in original pixels."""

    def __init__(self, config: Any, variables: Any, category_names: Sequence[str] | None = None,
                 category_ids: Sequence[int] | None = None):
        """`config`: the full ConfigDict; `variables`: {'params', 'batch_stats'} for the model it builds; the class
        names and original category ids in label order ('class <i>' and i + 1 when not given)."""
        num_classes = config.model.num_classes
        self.config = config
        self.variables = variables
        self.category_names = list(category_names) if category_names else [f"class {i}" for i in range(num_classes)]
        self.category_ids = list(category_ids) if category_ids else list(range(1, num_classes + 1))
        if len(self.category_names) != num_classes or len(self.category_ids) != num_classes:
            raise ValueError(f"{len(self.category_names)} class names and {len(self.category_ids)} category ids "
                             f"given for a model of {num_classes} classes")
        self._predictor = Predictor(config).load(variables)
        self.model = self._predictor.model

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None, config: Any = None) -> "Detector":
        """Load checkpoint `step` (None: latest) of `workdir` with its saved config (or `config`)."""
        config = config if config is not None else checkpoints.load_config(workdir)
        _, variables = checkpoints.restore_variables(workdir, step, detector.abstract_variables(config))
        classes = checkpoints.load_classes(workdir)
        if classes is not None and len(classes[0]) != config.model.num_classes:
            classes = None       # a workdir converted or trained with another class list: fall back to indices
        return cls(config, variables, *(classes or (None, None)))

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [h, w, 3] -> (padded batch-1 image [1, H, W, 3], image_shape [1, 2], scale [1, 2])."""
        padded, image_shape, scale = examples.prepare_image(image, self.config.data)
        return padded[None], image_shape[None], scale[None]

    def predict(self, images: np.ndarray | Sequence[np.ndarray], score_thr: float = 0.0,
                batch_size: int = 8) -> dict[str, Any] | list[dict[str, Any]]:
        """Detections of one image (a dict) or of each image of a list (a list of dicts), best first: boxes [K, 4]
        xyxy in original pixels, scores [K] (>= score_thr), labels [K] (0..C-1), names [K], category_ids [K]."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        images = [images] if single else list(images)
        prepared = [self._prepare(image) for image in images]
        results: list[dict[str, Any] | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (padded, _, _) in enumerate(prepared):
            by_shape.setdefault(padded.shape, []).append(index)
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                dets = self._predictor(np.concatenate([prepared[i][0] for i in chunk]),
                                       np.concatenate([prepared[i][1] for i in chunk]))
                scale = np.concatenate([prepared[i][2] for i in chunk])
                boxes = decode.rescale_boxes(dets["boxes"], scale)
                for row, index in enumerate(chunk):
                    keep = dets["valid"][row] & (dets["scores"][row] >= score_thr)
                    labels = dets["labels"][row][keep]
                    results[index] = dict(boxes=boxes[row][keep], scores=dets["scores"][row][keep], labels=labels,
                                          names=[self.category_names[int(c)] for c in labels],
                                          category_ids=np.asarray([self.category_ids[int(c)] for c in labels],
                                                                  np.int64))
        return results[0] if single else results

    def draw(self, image: np.ndarray, result: dict[str, Any], score_thr: float = 0.3) -> np.ndarray:
        """`image` with the predictions of `result` scoring >= score_thr drawn on it (uint8 [H, W, 3])."""
        shown = result["scores"] >= score_thr
        return draw.draw_boxes(image, result["boxes"][shown], labels=result["labels"][shown],
                               scores=result["scores"][shown], names=self.category_names)
