"""mmdetection state_dict (docs/spec.md §10 names) <-> the Flax variables of the DATE model a config builds.

The map is mechanical (see `date_jax.models.detector`): a Flax module path becomes the mmdet module name by turning
every `name_k` element into `name.k` and joining with '.', and the leaf maps as
  params      conv `kernel` [kh,kw,in,out] <- `weight` [out,in,kh,kw] (transpose 2,3,1,0); `bias` <- `bias`;
              GroupNorm `scale` [C] <- `weight`; Scale `scale` [] <- `scale` ([] or [1])
  batch_stats frozen BN `scale`, `bias`, `mean`, `var` <- `weight`, `bias`, `running_mean`, `running_var`
and `*.num_batches_tracked` is dropped. Conversion reports every missing key (the model needs it, the file lacks it),
every unused key (the file has it, the model does not) and every shape mismatch with both shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from date_jax.models import detector

PyTree = Any
Path = tuple[str, ...]

DROPPED_SUFFIXES = (".num_batches_tracked",)
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """A state dict does not fit the model: the message lists the missing, unused and mis-shaped keys."""


@dataclasses.dataclass
class ConversionReport:
    """Outcome of matching a state dict to a variable tree; every list holds mmdet key names, sorted."""

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)   # "key: checkpoint [..] vs model [..]"

    @property
    def complete(self) -> bool:
        """True when every model variable was loaded and every checkpoint tensor was used."""
        return not (self.missing or self.unused or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.missing)} missing, {len(self.unused)} unused, "
                 f"{len(self.mismatched)} with a wrong shape"]
        for title, keys in (("shape mismatches (checkpoint vs model)", self.mismatched),
                            ("missing from the checkpoint (the model needs them)", self.missing),
                            ("unused (in the checkpoint, not in the model)", self.unused)):
            if keys:
                lines.append(f"{title}:")
                lines.extend(f"  {k}" for k in keys)
        return "\n".join(lines)


def torch_module_name(module_path: Path) -> str:
    """Flax module path -> mmdet module name, e.g. ('backbone', 'layer1_0', 'downsample_0') ->
    'backbone.layer1.0.downsample.0'."""
    parts: list[str] = []
    for element in module_path:
        head, sep, tail = element.rpartition("_")
        parts.extend([head, tail] if sep and head and tail.isdigit() else [element])
    return ".".join(parts)


def torch_key(collection: str, path: Path, ndim: int) -> str:
    """mmdet state_dict key of the Flax variable `collection`/`path` (module path + leaf) of rank `ndim`."""
    module, leaf = torch_module_name(path[:-1]), path[-1]
    prefix = f"{module}." if module else ""
    if collection == "batch_stats" and leaf in _BN_LEAVES:
        return prefix + _BN_LEAVES[leaf]
    if collection == "params":
        if leaf == "kernel":
            return prefix + "weight"
        if leaf == "bias":
            return prefix + "bias"
        if leaf == "scale":
            return prefix + ("scale" if ndim == 0 else "weight")
    raise ConversionError(f"no mmdet name is known for the Flax variable {collection}/{'/'.join(path)}; "
                          "date_jax/convert/mmdet.py must learn this layer type")


def torch_shape(collection: str, path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape the PyTorch tensor of a Flax variable has: conv kernels [kh,kw,in,out] are [out,in,kh,kw] there."""
    if collection == "params" and path[-1] == "kernel" and len(shape) == 4:
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return tuple(shape)


def to_flax(array: np.ndarray, collection: str, path: Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A PyTorch tensor laid out as the Flax variable: OIHW -> HWIO for conv kernels, [1] -> [] for Scales."""
    array = np.asarray(array)
    if collection == "params" and path[-1] == "kernel" and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    return np.array(array.reshape(shape), dtype=dtype, order="C")


def _shape_fits(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Exact match, or a 0-dim Scale stored as [1] (mmcv versions differ)."""
    return found == expected or (expected == () and found == (1,))


def match_state_dict(state_dict: Mapping[str, np.ndarray], template: PyTree) -> tuple[dict, ConversionReport]:
    """Arrays for the variables of `template` ({'params', 'batch_stats'} of arrays or ShapeDtypeStructs) found in
    `state_dict`, as a flat {(collection, *path): array} dict, and the report of missing / unused / mis-shaped keys."""
    found: dict[tuple[str, ...], np.ndarray] = {}
    report = ConversionReport()
    used: set[str] = set()
    for collection, tree in template.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            shape, dtype = tuple(leaf.shape), leaf.dtype
            key = torch_key(collection, path, len(shape))
            if key not in state_dict:
                report.missing.append(key)
                continue
            used.add(key)
            expected = torch_shape(collection, path, shape)
            got = tuple(np.shape(state_dict[key]))
            if not _shape_fits(got, expected):
                report.mismatched.append(f"{key}: checkpoint {list(got)} vs model {list(expected)}")
                continue
            found[(collection, *path)] = to_flax(state_dict[key], collection, path, shape, dtype)
            report.loaded.append(key)
    report.unused = [k for k in state_dict if k not in used and not k.endswith(DROPPED_SUFFIXES)]
    for keys in (report.loaded, report.missing, report.unused, report.mismatched):
        keys.sort()
    return found, report


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict,
                            strict: bool = True) -> dict[str, PyTree]:
    """mmdet DATE state_dict (docs/spec.md §10) -> {'params', 'batch_stats'} numpy trees of the model `config` builds.

    Raises `ConversionError` listing every shape mismatch; with `strict` also every missing and unused key. With
    `strict=False` the missing variables are absent from the result (callers fill them) and the report is logged.
    """
    found, report = match_state_dict(state_dict, detector.abstract_variables(config))
    if report.mismatched or (strict and not report.complete):
        raise ConversionError(
            f"The checkpoint does not fit the model of this config (model.num_classes={config.model.num_classes}, "
            f"o2o={config.model.o2o!r}, o2m={config.model.o2m!r}, backbone depth={config.model.backbone.depth}); "
            f"pick the config the weights were trained with.\n{report}")
    if not report.complete:
        logging.warning("Checkpoint conversion: %s", report)
    variables: dict[str, PyTree] = {"params": {}, "batch_stats": {}}
    variables.update(traverse_util.unflatten_dict(found))
    return variables
