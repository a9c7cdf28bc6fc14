"""Pretrained weights by name: `open-mmlab://...` and `torchvision://...` names (and plain URLs) are downloaded once
into a cache and checked against the SHA-256 prefix their file names carry.

The names are those of the reference configs (mmcv's model zoo); each maps to one file URL. Following the torch.hub
convention, a file named `<name>-<hex>.pth` must have a SHA-256 digest that starts with `<hex>` (8 or more digits);
a download that does not is refused and not kept. The cache is `$DATE_JAX_CACHE/pretrained` (default
`~/.cache/date_jax/pretrained`); `$DATE_JAX_WEIGHTS_URL` replaces the folder part of every URL (a mirror, or a test
server), the file name staying the same.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request

from absl import logging

CACHE_ENV = "DATE_JAX_CACHE"
BASE_URL_ENV = "DATE_JAX_WEIGHTS_URL"
SCHEMES = ("open-mmlab://", "torchvision://", "http://", "https://")
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")

MODEL_ZOO = {
    # Detectron (MSRA) caffe ResNets as converted by open-mmlab: mmcv's model_zoo/open_mmlab.json
    "open-mmlab://detectron/resnet50_caffe":
        "https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth",
    "open-mmlab://detectron/resnet101_caffe":
        "https://download.openmmlab.com/pretrain/third_party/resnet101_caffe-3ad79236.pth",
    # torchvision's ImageNet ResNets (IMAGENET1K_V1 weights)
    "torchvision://resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision://resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


class WeightsDownloadError(RuntimeError):
    """A named weights file could not be fetched or failed its hash check; the message says what to do."""


def is_remote(value: str) -> bool:
    """Whether a config value names downloadable weights rather than a local path."""
    return value.startswith(SCHEMES)


def cache_dir() -> str:
    """Folder holding downloaded weights: `$DATE_JAX_CACHE/pretrained`, default `~/.cache/date_jax/pretrained`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "date_jax")
    return os.path.join(root, "pretrained")


def url_for(name: str) -> str:
    """The URL a weights name stands for, under `$DATE_JAX_WEIGHTS_URL` when that is set."""
    if name.startswith(("http://", "https://")):
        url = name
    elif name in MODEL_ZOO:
        url = MODEL_ZOO[name]
    else:
        raise WeightsDownloadError(f"Unknown pretrained weights name {name!r}; known names: "
                                   f"{', '.join(sorted(MODEL_ZOO))} (or give a URL or a local .pth path).")
    base = os.environ.get(BASE_URL_ENV)
    if base:
        url = base.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    return url


def expected_hash(file_name: str) -> str | None:
    """The SHA-256 prefix in a file name such as `resnet50_caffe-788b5fa3.pth` ('788b5fa3'), or None."""
    match = HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def _sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, timeout_s: float = 60.0) -> str:
    """Local path of the weights `name` (a zoo name or URL): the cached file, or a fresh, hash-checked download."""
    url = url_for(name)
    file_name = os.path.basename(urllib.parse.urlparse(url).path)
    path = os.path.join(cache_dir(), file_name)
    prefix = expected_hash(file_name)
    if os.path.isfile(path):
        if prefix is None or _sha256(path).startswith(prefix):
            return path
        logging.warning("Cached %s does not match the hash in its name; downloading it again.", path)
        os.remove(path)
    os.makedirs(cache_dir(), exist_ok=True)
    partial = f"{path}.part-{os.getpid()}"
    logging.info("Downloading %s (%s) to %s", name, url, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        if os.path.exists(partial):
            os.remove(partial)
        reason = getattr(e, "reason", None) or e
        raise WeightsDownloadError(
            f"Could not download {name} from {url} ({reason}). Without internet access, fetch that URL elsewhere and "
            f"put the file at {path}, or set the config key to the path of a local copy.") from None
    digest = _sha256(partial)
    if prefix is not None and not digest.startswith(prefix):
        os.remove(partial)
        raise WeightsDownloadError(
            f"The download of {url} has SHA-256 {digest[:16]}..., not the {prefix}... its name promises: the file is "
            "corrupt or not the published one, so it was not kept. Retry, or check $DATE_JAX_WEIGHTS_URL.")
    os.replace(partial, path)
    return path
