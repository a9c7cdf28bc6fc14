"""Evaluation driver: jitted predict + decode over the validation batches, gathered to process 0, scored there.

Each process predicts its own shard of the validation set on its local devices (no collectives inside the loop, so
processes may hold different numbers of batches); fixed-size detection arrays are then gathered to process 0 with
`process_allgather`, rescaled to the original images, turned into COCO results and scored with the metric of
`config.test.metric` ('coco' or 'crowdhuman'). The metrics are broadcast back so every process returns them.
Prediction (`predict_rows`) and scoring (`score_rows`) are separate, so a training loop can score in a worker thread.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from date_jax.data import pipeline
from date_jax.evaluation import coco_metrics, crowdhuman_metrics, decode, draw
from date_jax.models import detector
from date_jax.train import checkpoints

EVAL_SUBDIR = "eval"
METRICS = {"coco": coco_metrics.METRIC_NAMES, "crowdhuman": crowdhuman_metrics.METRIC_NAMES}
SUMMARY_SCORE_THR = 0.3            # predicted boxes drawn on summary images
PredictFn = Callable[[Any, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Names of the numbers `evaluate_variables` returns for `config.test.metric`."""
    if config.test.metric not in METRICS:
        raise ValueError(f"config.test.metric={config.test.metric!r} is not one of {sorted(METRICS)}")
    return METRICS[config.test.metric]


def _local_mesh() -> Mesh:
    """A one-axis mesh over this process's devices (evaluation runs per process)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def host_variables(variables: Any) -> Any:
    """Variables as host numpy arrays, also when they are global arrays of a multi-process mesh (replicated)."""
    def fetch(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(fetch, variables)


def local_predictor(config: ml_collections.ConfigDict, model: Any, variables: Any) -> PredictFn:
    """A host-level function (images [B,H,W,3], image_shape [B,2]) -> numpy detections, data-parallel on local devices.

    The batch is padded to a multiple of the local device count, split over a process-local mesh, and unpadded.
    """
    mesh = _local_mesh()
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))
    device_variables = jax.device_put(host_variables(variables), replicated)
    predict = decode.make_predict_fn(config, model)
    num_devices = mesh.devices.size

    def run(images: np.ndarray, image_shape: np.ndarray) -> dict[str, np.ndarray]:
        batch = images.shape[0]
        pad = -batch % num_devices
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
            image_shape = np.concatenate([image_shape, np.repeat(image_shape[-1:], pad, 0)])
        out = predict(device_variables, jax.device_put(np.asarray(images), sharded),
                      jax.device_put(np.asarray(image_shape, np.int32), sharded))
        return {k: np.asarray(v)[:batch] for k, v in out.items()}
    return run


def empty_rows(max_per_img: int, max_boxes: int) -> dict[str, np.ndarray]:
    """The rows of `predict_batches` for zero images (a process without validation images)."""
    k, g = max_per_img, max_boxes
    return dict(image_id=np.zeros([0], np.int64), boxes=np.zeros([0, k, 4], np.float32),
                scores=np.zeros([0, k], np.float32), labels=np.zeros([0, k], np.int32), valid=np.zeros([0, k], bool),
                gt_boxes=np.zeros([0, g, 4], np.float32), gt_labels=np.zeros([0, g], np.int32),
                gt_mask=np.zeros([0, g], bool), original_hw=np.zeros([0, 2], np.int32))


def predict_batches(predict: PredictFn, batches: Iterable[Mapping[str, np.ndarray]], *, max_per_img: int,
                    max_boxes: int) -> dict[str, np.ndarray]:
    """Detections of every real example (example_mask) of `batches`, rescaled to original pixels, plus their ground
    truth: image_id [n], boxes [n,K,4], scores, labels, valid [n,K], gt_boxes [n,G,4] (original px), gt_labels,
    gt_mask [n,G], original_hw [n,2] (K = max_per_img, G = max_boxes)."""
    parts = {name: [value] for name, value in empty_rows(max_per_img, max_boxes).items()}
    for batch in batches:
        keep = np.asarray(batch["example_mask"], bool)
        if not keep.any():
            continue
        dets = predict(np.asarray(batch["image"]), np.asarray(batch["image_shape"]))
        scale = np.asarray(batch["scale"], np.float32)
        rows = dict(image_id=np.asarray(batch["image_id"], np.int64),
                    boxes=decode.rescale_boxes(dets["boxes"], scale), scores=dets["scores"], labels=dets["labels"],
                    valid=dets["valid"], gt_boxes=decode.rescale_boxes(batch["boxes"], scale),
                    gt_labels=np.asarray(batch["labels"], np.int32), gt_mask=np.asarray(batch["box_mask"], bool),
                    original_hw=np.round(np.asarray(batch["image_shape"], np.float32) / scale).astype(np.int32))
        for name, value in rows.items():
            parts[name].append(np.asarray(value)[keep].astype(parts[name][0].dtype))
    return {name: np.concatenate(values) for name, values in parts.items()}


def gather_to_host(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every process's `rows` (same keys and trailing shapes, any length) in process order."""
    if jax.process_count() == 1:
        return rows
    if int(np.max(rows["image_id"], initial=0)) >= 2**31:
        raise ValueError("image ids must fit in int32 to be gathered across processes")
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([len(rows["image_id"])], np.int32))).ravel()
    longest = max(int(counts.max()), 1)
    padded = {}
    for name, value in rows.items():
        value = value.astype(np.int32) if value.dtype == np.int64 else value
        pad = [(0, longest - len(value))] + [(0, 0)] * (value.ndim - 1)
        padded[name] = np.pad(value, pad)
    gathered = multihost_utils.process_allgather(padded)
    return {name: np.concatenate([np.asarray(v)[p, :counts[p]] for p in range(len(counts))])
            for name, v in gathered.items()}


def ground_truth_from_rows(rows: Mapping[str, np.ndarray], category_ids: list[int]) -> dict[str, Any]:
    """A COCO ground-truth dict built from the batches' boxes (for sources without an annotation file)."""
    images, annotations = [], []
    for i, image_id in enumerate(rows["image_id"]):
        h, w = (int(v) for v in rows["original_hw"][i])
        images.append(dict(id=int(image_id), height=h, width=w))
        for box, label in zip(rows["gt_boxes"][i][rows["gt_mask"][i]], rows["gt_labels"][i][rows["gt_mask"][i]]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(dict(id=len(annotations) + 1, image_id=int(image_id), iscrowd=0,
                                    category_id=int(category_ids[label]), bbox=[x1, y1, x2 - x1, y2 - y1],
                                    area=(x2 - x1) * (y2 - y1)))
    return dict(images=images, annotations=annotations,
                categories=[dict(id=int(c), name=str(c)) for c in category_ids])


def compute_metrics(config: ml_collections.ConfigDict, ground_truth: Any, detections: list[dict],
                    image_ids: list[int]) -> dict[str, float]:
    """The metric of `config.test.metric` for COCO results against a COCO-format ground truth (path or dict)."""
    if config.test.metric == "crowdhuman":
        if isinstance(ground_truth, str):
            with open(ground_truth) as f:
                ground_truth = json.load(f)
        keep = set(image_ids)
        ground_truth = dict(ground_truth, images=[im for im in ground_truth["images"] if im["id"] in keep],
                            annotations=[a for a in ground_truth["annotations"] if a["image_id"] in keep])
        return crowdhuman_metrics.evaluate_crowdhuman(ground_truth, detections)
    return coco_metrics.evaluate_coco(ground_truth, detections, image_ids=image_ids)


def predict_rows(config: ml_collections.ConfigDict, model: Any, variables: Any, *,
                 num_images: int = 0) -> dict[str, np.ndarray]:
    """Detections of `variables` on the first `num_images` validation images (0: all), as rows gathered to every
    process (one row per image). Every process must call it: this is the part that uses the devices."""
    predict = local_predictor(config, model, variables)
    batches = pipeline.eval_batches(config, process_index=jax.process_index(), process_count=jax.process_count(),
                                    num_images=num_images)
    return gather_to_host(predict_batches(predict, batches, max_per_img=config.test.max_per_img,
                                          max_boxes=config.data.max_boxes))


def score_rows(config: ml_collections.ConfigDict, rows: Mapping[str, np.ndarray]) -> tuple[dict[str, float], list]:
    """(metrics, COCO-format detections) of gathered prediction rows: host work only, safe in a worker thread."""
    if not len(rows["image_id"]):
        raise ValueError(f"the validation set of {config.data.source!r} gave no images to evaluate; check "
                         f"config.data.val_ann / val_images and num_eval_images")
    info = pipeline.dataset_info(config, "val")
    category_ids = list(info.category_ids)
    detections = coco_metrics.coco_results(rows["image_id"], rows["boxes"], rows["scores"], rows["labels"],
                                           rows["valid"], category_ids)
    ground_truth = info.ann_file or ground_truth_from_rows(rows, category_ids)
    metrics = compute_metrics(config, ground_truth, detections, sorted(set(int(i) for i in rows["image_id"])))
    return {name: float(metrics[name]) for name in metric_names(config)}, detections


def evaluate_variables(config: ml_collections.ConfigDict, model: Any, variables: Any, *,
                       num_images: int = 0) -> tuple[dict[str, float], list[dict]]:
    """(metrics, COCO-format detections) of `variables` on the first `num_images` validation images (0: all).

    Every process must call it; detections are returned on process 0 only ([] elsewhere), metrics everywhere.
    """
    names = metric_names(config)
    pipeline.dataset_info(config, "val")       # fails early, on every process, if the split is missing
    rows = predict_rows(config, model, variables, num_images=num_images)
    values = np.zeros(len(names), np.float64)
    detections: list[dict] = []
    if jax.process_index() == 0:
        metrics, detections = score_rows(config, rows)
        values = np.asarray([metrics[n] for n in names], np.float64)
    if jax.process_count() > 1:
        values = np.asarray(multihost_utils.broadcast_one_to_all(values.astype(np.float32)), np.float64)
    return dict(zip(names, (float(v) for v in values))), detections


def draw_predictions(config: ml_collections.ConfigDict, model: Any, variables: Any, *,
                     num_images: int = 4) -> np.ndarray:
    """The first `num_images` validation images (resized, unpadded) with true boxes (green) and predictions scoring
    >= 0.3 (red), zero-padded to a common size -> uint8 [K, H, W, 3] (K = 0 when there are none)."""
    info = pipeline.dataset_info(config, "val")
    predict = local_predictor(config, model, variables)
    names = list(info.category_names)
    canvases = []
    for batch in pipeline.eval_batches(config, process_index=0, process_count=1, num_images=num_images):
        dets = predict(np.asarray(batch["image"]), np.asarray(batch["image_shape"]))
        for b in np.flatnonzero(np.asarray(batch["example_mask"], bool)):
            h, w = (int(v) for v in batch["image_shape"][b])
            image = np.asarray(batch["image"][b][:h, :w])
            gt = np.asarray(batch["box_mask"][b], bool)
            image = draw.draw_boxes(image, batch["boxes"][b][gt], labels=batch["labels"][b][gt], names=names,
                                    color=draw.TRUE_COLOR)
            shown = dets["valid"][b] & (dets["scores"][b] >= SUMMARY_SCORE_THR)
            image = draw.draw_boxes(image, dets["boxes"][b][shown], labels=dets["labels"][b][shown],
                                    scores=dets["scores"][b][shown], names=names, color=draw.PREDICTED_COLOR)
            canvases.append(image)
        if len(canvases) >= num_images:
            break
    return draw.stack_images(canvases[:num_images])


def expected_variable_shapes(config: ml_collections.ConfigDict, model: Any) -> dict[str, tuple[int, ...]]:
    """{'params/...': shape} of the variables `model` (built from `config`) has, without computing them."""
    size = max(config.model.strides)
    abstract = jax.eval_shape(lambda: detector.init_variables(model, jax.random.key(0), (size, size)))
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract).items()}


def check_variables_fit(expected: Mapping[str, tuple[int, ...]], variables: Any, source: str) -> None:
    """Raise a ValueError naming the first parameter whose presence or shape differs between `variables` and the
    config's model (`expected`: path -> shape)."""
    got = {"/".join(k): tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(variables)).items()}
    advice = ("evaluate it with the config it was trained with (workdir/config.json, the default without --config) "
              "or fix the model settings of --config")
    for path in sorted(expected):
        if path not in got:
            raise ValueError(f"{source} does not fit the config: it has no {path} (the config's model needs shape "
                             f"{expected[path]}); {advice}")
        if got[path] != expected[path]:
            raise ValueError(f"{source} does not fit the config: {path} has shape {got[path]} in the checkpoint but "
                             f"{expected[path]} in the model the config builds; {advice}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ValueError(f"{source} does not fit the config: it holds {extra[0]} (shape {got[extra[0]]}) which the "
                         f"config's model does not have; {advice}")


def restore_for_config(config: ml_collections.ConfigDict, model: Any, workdir: str,
                       step: int | None = None) -> tuple[int, Any]:
    """(step, variables) of checkpoint `step` (None: latest) of `workdir`, checked against the model of `config`."""
    steps = checkpoints.available_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {checkpoints.checkpoint_dir(workdir)}: train first (train.py) "
                                "or convert a PyTorch checkpoint (tools/convert_checkpoint.py), or pass the right "
                                "--workdir")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoints.checkpoint_dir(workdir)}; "
                                f"available steps: {steps}")
    step, variables = checkpoints.restore_variables(workdir, step)
    check_variables_fit(expected_variable_shapes(config, model), variables,
                        f"checkpoint step {step} of {workdir}")
    return step, variables


def parse_step(step: str) -> int | str:
    """'latest' | 'all' | a step number."""
    if step in ("latest", "all"):
        return step
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"--step={step!r}: pass a step number, 'latest' or 'all'") from None


def evaluate_checkpoint(config: ml_collections.ConfigDict, model: Any, workdir: str, step: int,
                        writer: metric_writers.MetricWriter) -> dict[str, float]:
    """Evaluate checkpoint `step` of `workdir`; process 0 writes eval/<step>/{detections,metrics}.json, PNGs and
    TensorBoard scalars/images."""
    step, variables = restore_for_config(config, model, workdir, step)
    metrics, detections = evaluate_variables(config, model, variables, num_images=config.num_eval_images)
    num_pictures = max(int(config.num_summary_images), 0) if jax.process_index() == 0 else 0
    pictures = draw_predictions(config, model, variables, num_images=num_pictures) if num_pictures else []
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, EVAL_SUBDIR, str(step))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "detections.json"), "w") as f:
            json.dump(detections, f)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(dict(step=step, **metrics), f, indent=2)
        for i, picture in enumerate(pictures):
            draw.save_png(picture, os.path.join(out_dir, f"image_{i}.png"))
    writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
    if len(pictures):
        writer.write_images(step, {"val/predictions": pictures})
    writer.flush()
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, step: str = "latest", *, watch: bool = False,
                     watch_interval_s: float = 60.0, watch_timeout_s: float = 3600.0) -> dict[int, dict[str, float]]:
    """evaluate.py: evaluate checkpoint `step` ('latest', 'all' or a number) of `workdir`; with `watch`, keep
    evaluating each new checkpoint until none has appeared for `watch_timeout_s`. Returns {step: metrics}."""
    which = parse_step(step)
    model = detector.build_model(config)
    steps = checkpoints.available_steps(workdir)
    if not steps and not watch:
        raise FileNotFoundError(f"no checkpoints in {checkpoints.checkpoint_dir(workdir)}: train first (train.py) "
                                "or convert a PyTorch checkpoint (tools/convert_checkpoint.py), or pass the right "
                                "--workdir")
    if isinstance(which, int) and which not in steps:
        raise FileNotFoundError(f"no checkpoint for step {which} in {checkpoints.checkpoint_dir(workdir)}; "
                                f"available steps: {steps}")
    todo = steps if which == "all" else [which] if isinstance(which, int) else steps[-1:]
    writer = metric_writers.create_default_writer(os.path.join(workdir, EVAL_SUBDIR),
                                                  just_logging=jax.process_index() > 0)
    results: dict[int, dict[str, float]] = {}
    last_new = time.monotonic()
    while True:
        for s in todo:
            results[s] = evaluate_checkpoint(config, model, workdir, s, writer)
        if not watch:
            break
        if todo:
            last_new = time.monotonic()
        if time.monotonic() - last_new > watch_timeout_s:
            logging.info("no new checkpoint in %s for %.0f s: stopping", workdir, watch_timeout_s)
            break
        time.sleep(watch_interval_s)
        newest = max(results, default=-1)
        todo = [s for s in checkpoints.available_steps(workdir) if s > newest]
    writer.close()
    return results
