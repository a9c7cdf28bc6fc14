"""Export a trained DATE for serving: one function from uint8 pixels to boxes in original pixels, no NMS, no host code.

The serving function holds the whole inference path of `Detector.predict` except the resize: normalisation and
padding mask, the network, the one-to-one decoding (score threshold, per-level top-k, clipping to the resized image,
top `max_per_img`; docs/spec.md §6) and the rescale to the original image size. Its shapes are static:

    inputs   images       uint8 [B, H, W, 3]  RGB, resized keep-ratio (`resized_hw`), zero-padded bottom/right to H x W
             image_hw     int32 [B, 2]        (h, w) of each resized image inside the padding
             original_hw  int32 [B, 2]        (h, w) of each original image
    outputs  boxes        float32 [B, K, 4]   xyxy in original pixels     K = config.test.max_per_img
             scores       float32 [B, K]      best first
             labels       int32 [B, K]        0..C-1 (the artifact's JSON maps them to category ids and names)
             num_detections int32 [B]         rows [0, n) are detections; later rows are 0 (labels -1)

(H, W) defaults to the landscape bucket of the config's test transform (`default_input_size`); B is symbolic
(`batch=None`) or fixed. Two artifacts: a `jax.export` serialization (StableHLO, variables baked in as constants) and
a TensorFlow SavedModel (jax2tf, whose lowering is always native StableHLO in jax 0.10; variables as tf.Variables),
plus `detector.json` with the contract, the preprocessing, the categories and a config summary.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import jaxlib.mlir.dialects.stablehlo as stablehlo
import ml_collections
import numpy as np

from date_jax import checkpoints, decode
from date_jax.data import transforms
from date_jax.models import detector

STABLEHLO_FILE = "detector.stablehlo"
SAVEDMODEL_DIR = "saved_model"
METADATA_FILE = "detector.json"
SIGNATURE = "serving_default"
FORMATS = ("stablehlo", "savedmodel")
INPUT_NAMES = ("images", "image_hw", "original_hw")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
SIZE_MULTIPLE = 32          # the backbone's output stride (C5); padded sizes are multiples of it (docs/spec.md §2.3)
FORMAT_VERSION = 1

Array = jax.Array
Variables = dict[str, Any]


def default_input_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(H, W) of the landscape bucket the config evaluates at: (test short side, max size), each rounded up to the
    bucket divisor. Every landscape image resized by the test transform fits it."""
    data = config.data
    divisor = int(data.bucket_divisor)
    return tuple(int(-(-int(v) // divisor) * divisor) for v in (data.test_short_size, data.max_size))


def resized_hw(original_hw: np.ndarray, config: ml_collections.ConfigDict, input_size: Sequence[int]) -> np.ndarray:
    """The artifact's resize: original (h, w) [N, 2] -> int32 [N, 2] = floor(side * f + 0.5),
    f = min(max_size / long side, test_short / short side, H / h, W / w).

    Without the last two terms this is the config's test transform (`transforms.plan_test`); they shrink images that
    would not fit the static (H, W), e.g. portrait images in a landscape artifact."""
    hw = np.asarray(original_hw, np.float64).reshape(-1, 2)
    data = config.data
    factor = np.minimum(float(data.max_size) / hw.max(axis=1), float(data.test_short_size) / hw.min(axis=1))
    factor = np.minimum(factor, np.minimum(input_size[0] / hw[:, 0], input_size[1] / hw[:, 1]))
    return np.floor(hw * factor[:, None] + 0.5).astype(np.int32)


def prepare_images(images: Sequence[np.ndarray], config: ml_collections.ConfigDict,
                   input_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Host preprocessing for the artifact: uint8 RGB images [h, w, 3] -> its three inputs (batch of len(images))."""
    original = np.array([np.asarray(image).shape[:2] for image in images], np.int32).reshape(-1, 2)
    resized = resized_hw(original, config, input_size)
    batch = np.zeros((len(images), int(input_size[0]), int(input_size[1]), 3), np.uint8)
    for i, image in enumerate(images):
        crop = np.array([0, 0, *resized[i]], np.int32)
        transforms.transform_image(np.ascontiguousarray(image), False, resized[i], crop, resized[i], out=batch[i])
    return dict(images=batch, image_hw=resized, original_hw=original)


def serving_function(config: ml_collections.ConfigDict) -> Callable[..., dict[str, Array]]:
    """serve(variables, images uint8 [B,H,W,3], image_hw int32 [B,2], original_hw int32 [B,2]) -> the four outputs of
    the module docstring; the model is `detector.build_model(config)`, the decoding `decode.decode_outputs`."""
    model = detector.build_model(config)

    def serve(variables: Variables, images: Array, image_hw: Array, original_hw: Array) -> dict[str, Array]:
        outputs = model.apply(variables, images, image_hw)
        dets = decode.decode_outputs(outputs, image_hw, image_hw=images.shape[1:3], config=config)
        scale = image_hw.astype(jnp.float32) / original_hw.astype(jnp.float32)      # resized / original, (h, w)
        factors = jnp.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)[:, None, :]
        valid = dets["valid"]
        return dict(boxes=jnp.where(valid[..., None], dets["boxes"] / factors, 0.0),
                    scores=jnp.where(valid, dets["scores"], 0.0),
                    labels=jnp.where(valid, dets["labels"], -1).astype(jnp.int32),
                    num_detections=valid.sum(axis=1).astype(jnp.int32))
    return serve


def input_specs(input_size: Sequence[int], batch: int | None) -> tuple[jax.ShapeDtypeStruct, ...]:
    """ShapeDtypeStructs of (images, image_hw, original_hw); batch None -> one symbolic dimension `b` for all three."""
    b = jax.export.symbolic_shape("b")[0] if batch is None else int(batch)
    h, w = (int(v) for v in input_size)
    return (jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((b, 2), jnp.int32),
            jax.ShapeDtypeStruct((b, 2), jnp.int32))


def stablehlo_target_version() -> str:
    """The StableHLO version the artifacts are serialized for: the newest one at least 12 weeks older than this
    jaxlib's (its WEEK_12 compatibility requirement). jax.export's own choice (4 weeks) is newer than what the
    XlaCallModule op of TensorFlow 2.21 reads (jax 0.10.2 writes `vhlo.composite_v2` for top-k, TF stops at 1.13.7)."""
    return stablehlo.get_version_from_compatibility_requirement(stablehlo.StablehloCompatibilityRequirement.WEEK_12)


def _portable_module(module_bytes: bytes, target_version: str, inline_composites: bool = False) -> bytes:
    """A serialized StableHLO portable artifact written again for `target_version`; with `inline_composites`, every
    `stablehlo.composite` (jax's top-k is one) becomes a call of its decomposition first.

    TensorFlow 2.21 does not refine the shapes inside a composite's decomposition, so a symbolic batch fails there
    ("'stablehlo.dynamic_iota' op has dynamic shapes"); calls it refines like the rest of the module."""
    if not inline_composites:
        return stablehlo.serialize_portable_artifact_str(stablehlo.deserialize_portable_artifact_str(module_bytes),
                                                         target_version)
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import chlo, func

    context = ir.Context()
    stablehlo.register_dialect(context)
    chlo.register_dialect(context)
    with context:
        module = stablehlo.deserialize_portable_artifact(context, module_bytes)
        composites = []

        def collect(op: Any) -> Any:
            if op.name == "stablehlo.composite":
                composites.append(op)
            return ir.WalkResult.ADVANCE
        module.operation.walk(collect)
        for op in composites:
            decomposition = ir.FlatSymbolRefAttr(op.attributes["decomposition"]).value
            with ir.InsertionPoint(op), op.location:
                call = func.CallOp([r.type for r in op.results], ir.FlatSymbolRefAttr.get(decomposition),
                                   list(op.operands))
            for old, new in zip(op.results, call.results):
                old.replace_all_uses_with(new)
            op.erase()
        module.operation.verify()
        return stablehlo.serialize_portable_artifact(module, target_version)


@contextlib.contextmanager
def _jax_serializes_for(target_version: str, inline_composites: bool = False):
    """Within the block, jax.export (and jax2tf through it) writes StableHLO as `_portable_module` does.

    jax 0.10 has no public setting for this; the block wraps `jax._src.export._export._module_to_bytecode`, the one
    function that serializes an exported module, and restores it on exit."""
    from jax._src.export import _export
    original = _export._module_to_bytecode
    _export._module_to_bytecode = lambda module: _portable_module(original(module), target_version, inline_composites)
    try:
        yield
    finally:
        _export._module_to_bytecode = original


def export_stablehlo(config: ml_collections.ConfigDict, variables: Variables, input_size: Sequence[int],
                     batch: int | None = None, platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """The serving function with `variables` baked in as constants, lowered by `jax.export` for `platforms`
    (None: the default backend); `exported.call(images, image_hw, original_hw)` runs it."""
    serve = serving_function(config)
    constants = jax.tree.map(np.asarray, variables)

    def serve_baked(images: Array, image_hw: Array, original_hw: Array) -> dict[str, Array]:
        return serve(constants, images, image_hw, original_hw)
    exported = jax.export.export(jax.jit(serve_baked), platforms=platforms)(*input_specs(input_size, batch))
    return dataclasses.replace(exported, mlir_module_serialized=_portable_module(exported.mlir_module_serialized,
                                                                                 stablehlo_target_version()))


def save_savedmodel(config: ml_collections.ConfigDict, variables: Variables, input_size: Sequence[int], path: str,
                    batch: int | None = None, platforms: Sequence[str] | None = None) -> None:
    """Write a TF SavedModel at `path` whose `serving_default` signature runs the serving function (jax2tf; the
    variables are tf.Variables of the SavedModel, the computation one XlaCallModule op)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    poly = [None] + (["(b, ...)"] * 3 if batch is None else [None] * 3)
    converted = jax2tf.convert(serving_function(config), polymorphic_shapes=poly, with_gradient=False,
                               native_serialization_platforms=tuple(platforms) if platforms else None)
    module = tf.Module()
    module.variables_tree = jax.tree.map(lambda x: tf.Variable(np.asarray(x), trainable=False), variables)
    h, w = (int(v) for v in input_size)
    signature = [tf.TensorSpec((batch, h, w, 3), tf.uint8, name="images"),
                 tf.TensorSpec((batch, 2), tf.int32, name="image_hw"),
                 tf.TensorSpec((batch, 2), tf.int32, name="original_hw")]

    @tf.function(input_signature=signature, autograph=False)
    def serving_default(images, image_hw, original_hw):
        return converted(module.variables_tree, images, image_hw, original_hw)

    module.serving_default = serving_default
    with _jax_serializes_for(stablehlo_target_version(), inline_composites=True):
        tf.saved_model.save(module, path, signatures={SIGNATURE: serving_default.get_concrete_function()})


def category_table(config: ml_collections.ConfigDict, workdir: str | None = None) -> tuple[list[str], list[int], str]:
    """(names, category ids, where they came from) in label order: the workdir's `classes.json` (written by
    training), else the validation annotations when they can be read, else 'class <i>' with id i."""
    from date_jax.data import pipeline
    num_classes = int(config.model.num_classes)
    classes = checkpoints.load_classes(workdir) if workdir else None
    if classes is not None and len(classes[0]) == num_classes:
        return classes[0], classes[1], os.path.join(workdir, checkpoints.CLASSES_FILE)
    try:
        info = pipeline.dataset_info(config, "val")
    except (OSError, ValueError, KeyError, ImportError) as error:
        return _fallback_categories(num_classes, f"validation annotations not readable ({error})")
    if len(info.category_names) != num_classes:
        return _fallback_categories(num_classes, f"{info.ann_file or config.data.source} lists "
                                                 f"{len(info.category_names)} categories, the model has {num_classes}")
    source = info.ann_file or f"tfds {config.data.tfds_name} ({config.data.tfds_val_split})"
    return list(info.category_names), [int(c) for c in info.category_ids], source


def _fallback_categories(num_classes: int, reason: str) -> tuple[list[str], list[int], str]:
    """'class <i>' names and ids 0..C-1, with the reason."""
    return ([f"class {i}" for i in range(num_classes)], list(range(num_classes)),
            f"fallback names 'class <label>' and ids = labels: {reason}")


def check_input_size(size: Sequence[int]) -> tuple[int, int]:
    """(H, W) as ints if it is two positive multiples of SIZE_MULTIPLE, else ValueError naming the value."""
    values = tuple(size)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 and v % SIZE_MULTIPLE == 0
                                   for v in values):
        raise ValueError(f"input size {values!r} must be two positive multiples of {SIZE_MULTIPLE} (H, W)")
    return int(values[0]), int(values[1])


def metadata(config: ml_collections.ConfigDict, *, input_size: Sequence[int], batch: int | None,
             platforms: Sequence[str], categories: tuple[list[str], list[int], str], files: dict[str, str],
             source: dict[str, Any]) -> dict[str, Any]:
    """The JSON that travels with the artifacts: input contract, preprocessing, outputs, categories, config summary."""
    h, w = (int(v) for v in input_size)
    names, ids, categories_from = categories
    data = config.data
    batch_dim = None if batch is None else int(batch)
    k = int(config.test.max_per_img)
    return {
        "format": "date-jax detector export", "format_version": FORMAT_VERSION, "files": files, "source": source,
        "jax_version": jax.__version__, "stablehlo_version": stablehlo_target_version(),
        "platforms": list(platforms), "signature": SIGNATURE,
        "input_size": [h, w], "batch": "dynamic" if batch is None else batch_dim,
        "inputs": {
            "images": {"dtype": "uint8", "shape": [batch_dim, h, w, 3],
                       "meaning": "RGB, resized as `preprocessing` says, at the top-left of a zero H x W canvas"},
            "image_hw": {"dtype": "int32", "shape": [batch_dim, 2], "meaning": "(h, w) of each resized image"},
            "original_hw": {"dtype": "int32", "shape": [batch_dim, 2], "meaning": "(h, w) of each original image"},
        },
        "outputs": {
            "boxes": {"dtype": "float32", "shape": [batch_dim, k, 4],
                      "meaning": "x1, y1, x2, y2 in original pixels (clipped to the resized image, then rescaled)"},
            "scores": {"dtype": "float32", "shape": [batch_dim, k], "meaning": "class probability, best first"},
            "labels": {"dtype": "int32", "shape": [batch_dim, k], "meaning": "index into `categories`"},
            "num_detections": {"dtype": "int32", "shape": [batch_dim],
                               "meaning": "rows [0, n) of boxes/scores/labels are detections; the rest are 0, "
                                          "labels -1"},
        },
        "preprocessing": {
            "color": "RGB uint8, as decoded; normalisation runs inside the artifact",
            "resize_factor": "f = min(max_size / max(h, w), test_short_size / min(h, w), H / h, W / w) for an "
                             "original image of (h, w)",
            "resized_hw": "(floor(h * f + 0.5), floor(w * f + 0.5)), in float64",
            "interpolation": "bilinear, half-pixel centres, no antialiasing, on uint8 (OpenCV cv2.resize with "
                             "INTER_LINEAR, as mmcv's imresize); no resize when resized_hw == (h, w)",
            "padding": "zeros below and right of the resized image, up to H x W",
            "test_short_size": int(data.test_short_size), "max_size": int(data.max_size),
            "equals_evaluation": "the config's test transform when the image fits H x W (the H / h, W / w terms do "
                                 "not bind); outputs equal the evaluation's for images whose evaluation bucket "
                                 f"(sides rounded up to {int(data.bucket_divisor)}) is H x W, and differ slightly "
                                 "for others (GroupNorm statistics cover the padding)",
        },
        "categories": [{"label": i, "id": c, "name": n} for i, (c, n) in enumerate(zip(ids, names))],
        "categories_from": categories_from,
        "config": {
            "model": config.model.to_dict(), "test": config.test.to_dict(), "dtype": config.dtype,
            "data": {key: data[key] for key in ("source", "pipeline", "test_short_size", "max_size",
                                                "bucket_divisor")},
        },
    }


def export_workdir(workdir: str, out: str, *, step: int | None = None, formats: Sequence[str] = FORMATS,
                   batch: int | None = None, input_size: Sequence[int] | None = None,
                   platforms: Sequence[str] = ("cpu", "cuda")) -> dict[str, Any]:
    """Export checkpoint `step` (None: latest) of `workdir` into `out` in `formats`; returns the metadata written to
    `out/detector.json`. User mistakes (workdir, step, format, batch, size) raise ValueError / FileNotFoundError."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"format {', '.join(unknown) or '(none)'} is not one of {', '.join(FORMATS)}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch <= 0):
        raise ValueError(f"batch {batch!r} must be a positive integer or None (symbolic)")
    size = None if input_size is None else check_input_size(input_size)
    config_path = os.path.join(workdir, checkpoints.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir!r} is not a date-jax workdir (train.py or "
                                "tools/convert_checkpoint.py writes it)")
    try:
        config = checkpoints.load_config(workdir)
    except ValueError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    try:
        expected = detector.abstract_variables(config)
        size = size or default_input_size(config)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"{config_path} is not a complete date-jax config "
                         f"({type(error).__name__}: {error})") from error
    try:
        step, variables = checkpoints.restore_variables(workdir, step, expected)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as error:  # a damaged checkpoint: orbax raises many kinds
        raise ValueError(f"checkpoint {'latest' if step is None else step} of {workdir} could not be restored "
                         f"({type(error).__name__}: {str(error)[:300]})") from error
    os.makedirs(out, exist_ok=True)
    files = {}
    if "stablehlo" in formats:
        exported = export_stablehlo(config, variables, size, batch, platforms)
        with open(os.path.join(out, STABLEHLO_FILE), "wb") as f:
            f.write(exported.serialize())
        files["stablehlo"] = STABLEHLO_FILE
    if "savedmodel" in formats:
        save_savedmodel(config, variables, size, os.path.join(out, SAVEDMODEL_DIR), batch, platforms)
        files["savedmodel"] = SAVEDMODEL_DIR
    info = metadata(config, input_size=size, batch=batch, platforms=platforms,
                    categories=category_table(config, workdir), files=files,
                    source={"workdir": os.path.abspath(workdir), "step": int(step)})
    with open(os.path.join(out, METADATA_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info
