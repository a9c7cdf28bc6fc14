"""Read `torch.save` checkpoints into numpy arrays without PyTorch and without running anything from the file.

Both container formats are understood: the zip archive written since PyTorch 1.6 (`<name>/data.pkl` plus one record per
storage) and the legacy stream (magic number, protocol, system info, the pickle, the storage keys, the raw storages).
The pickle is read by an unpickler that resolves only the handful of globals a tensor checkpoint needs, each to a
function of this module: `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`, the typed
`torch.*Storage` classes and `collections.OrderedDict` (plus numpy scalars and `_codecs.encode`, which appear in
mmcv's `meta`). Any other global is refused by name before it could be called, so the file's code never runs.

Sizes declared inside the file (pickle string and frame lengths, zip record sizes, legacy storage lengths, tensor
shapes) are checked against the bytes the file actually holds before anything is allocated, so a small crafted file
cannot ask for gigabytes of memory.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import pickletools
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
IGNORED_SECTIONS = ("meta", "optimizer")

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a global (code) that a plain tensor checkpoint never needs; nothing of it was run."""


class CheckpointFormatError(ValueError):
    """The file is not a readable `torch.save` checkpoint (truncated, inconsistent, or an unsupported layout)."""


class _Sealed:
    """Base of the reader's own records: a pickle may not BUILD (overwrite) their fields."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError(f"the pickle tries to set the state of a {type(self).__name__[1:]}; refused")


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
    """Stands for a `torch.<Name>Storage` class: only its element dtype matters."""
    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef(_Sealed):
    """A storage named by the pickle's persistent id; its bytes are read only when a kept tensor needs them."""
    key: str
    dtype: np.dtype
    numel: int
    element_offset: int = 0   # legacy storage views start this many elements into the root storage


@dataclasses.dataclass(frozen=True)
class _TensorRef(_Sealed):
    """Result of `_rebuild_tensor_v2`: where a tensor's elements lie in its storage."""
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _OrderedDict(dict):
    """`collections.OrderedDict` as rebuilt from a pickle; the `_metadata` attribute of a state dict is dropped."""

    def __setstate__(self, state: Any) -> None:
        """Ignore instance state (PyTorch stores per-module version numbers there)."""


class _NumpyDType:
    """Stands for `numpy.dtype(spec, align, copy)`; the pickle's BUILD state only sets the byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str):
            raise UnsafeCheckpointError(f"numpy.dtype with a non-string spec {spec!r} is not allowed")
        self.spec = spec
        self.byte_order = "="

    def __setstate__(self, state: Any) -> None:
        """Record the byte order ('<', '>', '|' or '=') from numpy's dtype state tuple."""
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byte_order = state[1]

    def to_numpy(self) -> np.dtype:
        """The numpy dtype this stands for; only numeric and boolean dtypes are accepted."""
        try:
            dtype = np.dtype(self.spec).newbyteorder(self.byte_order)
        except TypeError:
            raise CheckpointFormatError(f"unknown numpy dtype {self.spec!r} in the pickle") from None
        if dtype.kind not in "biufc":
            raise UnsafeCheckpointError(f"numpy scalar of dtype {self.spec!r} is not allowed (numbers only)")
        return dtype


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    """Validate `torch._utils._rebuild_tensor_v2` arguments and record the tensor's view of its storage."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError(f"_rebuild_tensor_v2 expects a storage, got {type(storage).__name__}")
    if isinstance(metadata, dict) and any(metadata.values()):
        raise CheckpointFormatError(f"tensors with conjugate/negative bits set are not supported ({metadata})")
    ints = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else (None,)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise CheckpointFormatError(f"invalid tensor geometry: offset {storage_offset}, size {size}, stride {stride}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """`torch._utils._rebuild_parameter`: a parameter is just its tensor here."""
    return data


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """`numpy.core.multiarray.scalar(dtype, bytes)` for numeric dtypes, decoded with `np.frombuffer`."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise UnsafeCheckpointError("numpy scalar with unexpected arguments is not allowed")
    numpy_dtype = dtype.to_numpy()
    if len(data) != numpy_dtype.itemsize:
        raise CheckpointFormatError(f"numpy scalar of dtype {dtype.spec!r} with {len(data)} bytes of data")
    return np.frombuffer(data, dtype=numpy_dtype, count=1)[0]


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode(str, 'latin1')`, the way protocol-2 pickles spell a bytes object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _codecs_encode,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals come only from `_ALLOWED_GLOBALS`; storages are resolved by `resolve_storage`."""

    def __init__(self, file: BinaryIO, resolve_storage: Callable[[tuple], _StorageRef] | None, source: str) -> None:
        super().__init__(file)
        self._resolve_storage = resolve_storage
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return this module's stand-in for an allowed global; refuse every other one by name."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refused to load global '{module}.{name}'. A tensor checkpoint only needs PyTorch's "
                "tensor/storage rebuilders; this file asks for other code, so it may be malicious or hold pickled "
                "Python objects. Nothing from it was executed. If you trust it, re-save it with "
                "torch.save(model.state_dict(), path) and load that instead.") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        """Turn a `('storage', StorageType, key, location, numel[, view])` persistent id into a storage reference."""
        if self._resolve_storage is None:
            raise CheckpointFormatError(f"{self._source}: unexpected persistent id {pid!r} outside the main pickle")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
            raise CheckpointFormatError(f"{self._source}: unsupported persistent id {pid!r} (only tensor storages)")
        return self._resolve_storage(pid)


class _BoundedReader:
    """Reads of `file` limited to the `limit` bytes it holds from its current position: a length declared inside the
    pickle that exceeds them is refused before any buffer of that length is allocated."""

    def __init__(self, file: BinaryIO, limit: int, source: str) -> None:
        self._file, self._left, self._source = file, limit, source

    def _take(self, n: int) -> int:
        if n > self._left:
            raise CheckpointFormatError(f"{self._source}: the pickle declares {n:,} bytes where only {self._left:,} "
                                        "remain in the file; it is truncated or crafted")
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(self._take(self._left if n is None or n < 0 else n))
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = self._file.readinto(view[:self._take(len(view))])
        self._left -= count
        return count

    def readline(self, size: int = -1) -> bytes:
        line = self._file.readline(self._left if size is None or size < 0 else min(size, self._left))
        self._left -= len(line)
        return line


def _unpickle(file: BinaryIO, source: str, resolve_storage: Callable[[tuple], _StorageRef] | None = None,
              limit: int | None = None) -> Any:
    """Run the restricted unpickler over one pickle in `file`, reading at most `limit` bytes (default: to the end).

    The opcodes are scanned first (`pickletools.genops` builds nothing and resolves no global), because the unpickler
    allocates a declared string length before reading it; the scan refuses any length the file cannot hold."""
    position = file.tell()
    if limit is None:
        limit = file.seek(0, os.SEEK_END) - position
        file.seek(position)
    try:
        for _ in pickletools.genops(_BoundedReader(file, limit, source)):
            pass
    except CheckpointFormatError:
        raise
    except (ValueError, EOFError) as e:
        raise CheckpointFormatError(f"{source}: not a readable pickle ({e})") from None
    file.seek(position)
    return _RestrictedUnpickler(_BoundedReader(file, limit, source), resolve_storage, source).load()


def _materialise(ref: _TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    """Copy the strided view `ref` out of the 1-D `storage` array after checking it stays inside the storage."""
    if 0 in ref.shape:
        return np.zeros(ref.shape, storage.dtype)
    count = int(np.prod(ref.shape, dtype=object))
    if count > storage.size:
        raise CheckpointFormatError(
            f"tensor '{name}' declares shape {ref.shape} ({count:,} elements) over storage '{ref.storage.key}' of "
            f"{storage.size:,} elements; a checkpoint tensor never repeats elements, so the file is crafted or corrupt")
    start = ref.storage.element_offset + ref.offset
    last = start + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= storage.size:
        raise CheckpointFormatError(
            f"tensor '{name}' (shape {ref.shape}, stride {ref.stride}, offset {ref.offset}) reaches element {last} of "
            f"storage '{ref.storage.key}' which holds only {storage.size}: the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(storage[start:], shape=ref.shape,
                                           strides=[s * storage.itemsize for s in ref.stride], writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


def _select_state_dict(obj: Any, source: str) -> dict:
    """The tensors to return: `obj['state_dict']` when present, else `obj` without `meta` / `optimizer`."""
    if not isinstance(obj, dict):
        raise CheckpointFormatError(
            f"{source}: the checkpoint holds a {type(obj).__name__}, not a dict of tensors; save a state_dict")
    if isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    return {k: v for k, v in obj.items() if k not in IGNORED_SECTIONS}


def _flatten(tree: dict, read_storage: Callable[[_StorageRef], np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """Dotted names -> arrays for every tensor in nested dicts; other leaves (numbers, strings) are skipped."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            arrays.update(_flatten(value, read_storage, name + "."))
        elif isinstance(value, _TensorRef):
            arrays[name] = _materialise(value, read_storage(value.storage), name)
    return arrays


DEFLATE_MAX_RATIO = 1032   # deflate expands at most ~1032:1, so a record's declared size is bounded by its stored size


def _record_size(archive: zipfile.ZipFile, name: str, path: str) -> int:
    """The declared size of zip record `name` after checking it is consistent with the bytes stored for it."""
    info = archive.getinfo(name)
    file_size = os.path.getsize(path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointFormatError(f"{path}: record '{name}' uses zip compression {info.compress_type}; torch.save "
                                    "writes records uncompressed")
    bound = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO)
    if info.header_offset + info.compress_size > file_size or info.file_size > bound:
        raise CheckpointFormatError(f"{path}: record '{name}' declares {info.file_size:,} bytes, more than the "
                                    f"{file_size:,}-byte file can hold; it is truncated or crafted")
    return info.file_size


def _load_zip(path: str) -> dict[str, np.ndarray]:
    """Read the PyTorch >= 1.6 zip container."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path}: a torch zip checkpoint holds one '<name>/data.pkl', found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        byteorder_record = root + "byteorder"
        big_endian = (byteorder_record in archive.namelist()
                      and archive.read(byteorder_record).strip() == b"big")

        def resolve(pid: tuple) -> _StorageRef:
            _, storage_type, key, _location, numel = pid[:5]
            return _StorageRef(str(key), storage_type.dtype, numel)

        pickle_size = _record_size(archive, pickles[0], path)
        with archive.open(pickles[0]) as f:
            obj = _unpickle(f, path, resolve, limit=pickle_size)
        cache: dict[str, np.ndarray] = {}

        def read_storage(ref: _StorageRef) -> np.ndarray:
            if ref.key not in cache:
                record = f"{root}data/{ref.key}"
                try:
                    _record_size(archive, record, path)
                except KeyError:
                    raise CheckpointFormatError(f"{path}: storage record '{record}' is missing") from None
                raw = archive.read(record)
                dtype = ref.dtype.newbyteorder(">" if big_endian else "<")
                if len(raw) < ref.numel * dtype.itemsize:
                    raise CheckpointFormatError(
                        f"{path}: storage '{record}' has {len(raw)} bytes, expected {ref.numel * dtype.itemsize}")
                cache[ref.key] = np.frombuffer(raw, dtype=dtype, count=ref.numel)
            return cache[ref.key]

        return _flatten(_select_state_dict(obj, path), read_storage)


def _load_legacy(path: str) -> dict[str, np.ndarray]:
    """Read the pre-1.6 stream: magic, protocol, sys info, the pickle, storage keys, then each storage's raw bytes."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = _unpickle(f, path)
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a torch.save file (bad magic number {magic!r})")
        protocol = _unpickle(f, path)
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {protocol!r}")
        sys_info = _unpickle(f, path)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise CheckpointFormatError(f"{path}: big-endian legacy checkpoints are not supported")
        roots: dict[str, _StorageRef] = {}

        def resolve(pid: tuple) -> _StorageRef:
            _, storage_type, key, _location, numel = pid[:5]
            view = pid[5] if len(pid) == 6 else None
            root = roots.setdefault(str(key), _StorageRef(str(key), storage_type.dtype, numel))
            if view is None:
                return root
            _view_key, element_offset, view_numel = view
            return _StorageRef(root.key, root.dtype, view_numel, int(element_offset))

        obj = _unpickle(f, path, resolve)
        keys = _unpickle(f, path)
        storages: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in roots:
                raise CheckpointFormatError(f"{path}: storage '{key}' is listed but never referenced")
            dtype = roots[key].dtype.newbyteorder("<")
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: truncated before storage '{key}'")
            (numel,) = struct.unpack("<q", header)
            remaining = file_size - f.tell()
            if numel < 0 or numel * dtype.itemsize > remaining:
                raise CheckpointFormatError(f"{path}: storage '{key}' declares {numel:,} elements "
                                            f"({numel * dtype.itemsize:,} bytes) but only {remaining:,} bytes remain "
                                            "in the file; it is truncated or crafted")
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise CheckpointFormatError(f"{path}: storage '{key}' is truncated ({len(raw)} bytes read)")
            storages[key] = np.frombuffer(raw, dtype=dtype)

    def read_storage(ref: _StorageRef) -> np.ndarray:
        if ref.key not in storages:
            raise CheckpointFormatError(f"{path}: storage '{ref.key}' has no data in the file")
        return storages[ref.key]

    return _flatten(_select_state_dict(obj, path), read_storage)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a `torch.save` file as {dotted name: array} (the `state_dict` entry if any; `meta`/`optimizer`
    skipped).

    Arrays keep the tensor's shape and dtype (bfloat16 as `ml_dtypes.bfloat16`). Raises `UnsafeCheckpointError` for a
    pickle that needs any global beyond tensor rebuilding, `CheckpointFormatError` for an unreadable file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return _load_zip(path)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    raise CheckpointFormatError(
        f"{path}: not a torch.save checkpoint (starts with {head!r}; expected a zip archive or a pickle stream)")

