"""The safe torch.save reader: every tensor of the PyTorch-made fixtures (zip and legacy formats), and refusal of
pickles that ask for code. No torch needed."""
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from date_jax.convert import torch_pickle

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FORMATS = ["tensors_zip.pth", "tensors_legacy.pth"]


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, "tensors_expected.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", FORMATS)
def test_every_tensor_equals_the_fixture(name, expected):
    tensors = torch_pickle.load(os.path.join(FIXTURES, name))
    assert sorted(tensors) == sorted(expected)          # meta and optimizer are not returned
    for key, want in expected.items():
        got = tensors[key]
        assert got.shape == want.shape, key
        if key == "bfloat":
            assert got.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(got.astype(np.float32), want)
        else:
            assert got.dtype == want.dtype, key
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", FORMATS)
def test_strided_views_and_integers_by_hand(name):
    tensors = torch_pickle.load(os.path.join(FIXTURES, name))
    base = np.arange(24, dtype=np.float32).reshape(4, 6) / np.float32(7)
    np.testing.assert_array_equal(tensors["transposed"], base.T)
    np.testing.assert_array_equal(tensors["view_at_offset"], base[1:3, 2:5])
    assert tensors["bn.num_batches_tracked"].dtype == np.int64
    assert int(tensors["bn.num_batches_tracked"]) == 123456789012
    assert tensors["long_vector"].tolist() == [-3, 0, 2 ** 40]
    assert tensors["scale_0d"].shape == () and float(tensors["scale_0d"]) == 1.25
    assert tensors["scale_1d"].shape == (1,) and float(tensors["scale_1d"][0]) == 0.75
    assert tensors["empty"].shape == (0, 3)
    assert tensors["nested.deeper.bias"].dtype == np.float64
    assert tensors["half"].dtype == np.float16


class _RunsShell:
    """Pickles as a call of os.system: what a malicious checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _zip_checkpoint(path, payload: bytes) -> None:
    """A zip container shaped like torch.save's, holding `payload` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def _legacy_checkpoint(path, payload: bytes) -> None:
    """A legacy stream: magic number, protocol, sys info, then `payload` as the main pickle."""
    with open(path, "wb") as f:
        for header in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(payload)
        f.write(pickle.dumps([], protocol=2))


@pytest.mark.parametrize("protocol", [2, 4])      # GLOBAL and STACK_GLOBAL opcodes
@pytest.mark.parametrize("container", [_zip_checkpoint, _legacy_checkpoint])
@pytest.mark.parametrize("section", ["state_dict", "meta"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol, container, section):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({section: {"w": _RunsShell(f"touch {marker}")}}, protocol=protocol)
    assert b"system" in payload
    path = tmp_path / "evil.pth"
    container(path, payload)
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r"refused to load global '(posix|os)\.system'"):
        torch_pickle.load(path)
    assert not marker.exists()
    # The payload is real: an ordinary unpickler would have run it.
    pickle.loads(payload)
    assert marker.exists()


def test_arbitrary_globals_are_refused_by_name(tmp_path):
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load")]:
        payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
        path = tmp_path / f"{name}.pth"
        _zip_checkpoint(path, payload)
        with pytest.raises(torch_pickle.UnsafeCheckpointError, match=f"'{module}.{name}'"):
            torch_pickle.load(path)


# A few pickle opcodes, to write data.pkl files by hand with exactly the globals and arguments a test needs.
def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + _tuple(*args) + b"R"


def _tensor(offset: int, size: tuple, stride: tuple, numel: int, storage: bytes | None = None) -> bytes:
    """torch.save's spelling of a float32 tensor over storage '0' of `numel` elements."""
    if storage is None:
        storage = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(numel)) + b"Q"
    hooks = _global("collections", "OrderedDict") + b")R"
    return _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(offset),
                 _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", hooks)


def _checkpoint_with(tmp_path, value: bytes, storage_values: np.ndarray | None = None) -> str:
    """A zip checkpoint {'w': `value`} whose storage 0 holds `storage_values` (default 0..5)."""
    storage_values = np.arange(6, dtype=np.float32) if storage_values is None else storage_values
    path = str(tmp_path / "hand.pth")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}" + _str("w") + value + b"s.")
        archive.writestr("archive/data/0", storage_values.astype("<f4").tobytes())
    return path


def test_hand_written_tensor_reads_back(tmp_path):
    tensors = torch_pickle.load(_checkpoint_with(tmp_path, _tensor(1, (2, 2), (1, 2), 6)))
    np.testing.assert_array_equal(tensors["w"], [[1.0, 3.0], [2.0, 4.0]])


@pytest.mark.parametrize("geometry", [
    (3, (2, 2), (1, 2), 6),      # last element would be storage[6]
    (0, (4,), (2,), 6),          # strides past the end
    (0, (2,), (-1,), 6),         # negative stride
])
def test_tensor_outside_its_storage_is_refused(tmp_path, geometry):
    with pytest.raises(torch_pickle.CheckpointFormatError):
        torch_pickle.load(_checkpoint_with(tmp_path, _tensor(*geometry)))


def test_truncated_storage_is_refused(tmp_path):
    path = _checkpoint_with(tmp_path, _tensor(0, (6,), (1,), 6), storage_values=np.arange(4, dtype=np.float32))
    with pytest.raises(torch_pickle.CheckpointFormatError, match="bytes, expected 24"):
        torch_pickle.load(path)


def test_allowed_globals_with_bad_arguments_are_refused(tmp_path):
    # A tensor rebuilt over something that is not a storage.
    with pytest.raises(torch_pickle.CheckpointFormatError, match="expects a storage"):
        torch_pickle.load(_checkpoint_with(tmp_path, _tensor(0, (1,), (1,), 1, storage=_str("not a storage"))))
    # _codecs.encode is admitted only as protocol 2's latin-1 spelling of bytes.
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="_codecs.encode"):
        torch_pickle.load(_checkpoint_with(tmp_path, _call(_global("_codecs", "encode"), _str("x"), _str("rot13"))))
    # A persistent id that is not a tensor storage.
    with pytest.raises(torch_pickle.CheckpointFormatError, match="persistent id"):
        torch_pickle.load(_checkpoint_with(tmp_path, _tuple(_str("module"), _str("x")) + b"Q"))


def test_pickle_cannot_overwrite_the_readers_records(tmp_path):
    # BUILD with a state dict on a rebuilt tensor would re-point it at other memory if it were accepted.
    build = b"}" + _str("offset") + _int(0) + b"sb"
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="set the state"):
        torch_pickle.load(_checkpoint_with(tmp_path, _tensor(0, (2,), (1,), 6) + build))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(torch_pickle.CheckpointFormatError, match="not a torch.save checkpoint"):
        torch_pickle.load(path)


# Size bombs: a few hundred bytes that declare gigabytes. Each load runs in a child process whose address space is
# capped, so the reader must refuse from the declared sizes before allocating (an allocation fails the cap with
# MemoryError instead of the one-line CheckpointFormatError).
MEMORY_CAP = 3 * 2**30
_CAPPED_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from date_jax.convert import torch_pickle
try:
    torch_pickle.load(sys.argv[1])
    print("loaded")
except Exception as e:
    print(type(e).__name__ + ": " + str(e))
"""


def _capped_load(path) -> str:
    """The outcome line of `torch_pickle.load(path)` in a child limited to MEMORY_CAP bytes of address space."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", _CAPPED_LOAD.format(cap=MEMORY_CAP), str(path)], cwd=root,
                            capture_output=True, text=True, timeout=120)
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]


def _legacy_stream(path, main_pickle: bytes, keys: list, storages: bytes) -> None:
    """A legacy torch.save stream with the given main pickle, storage key list and raw storage section."""
    with open(path, "wb") as f:
        for header in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION,
                       {"protocol_version": 1001, "little_endian": True}):
            f.write(pickle.dumps(header, protocol=2))
        f.write(main_pickle)
        f.write(pickle.dumps(keys, protocol=2))
        f.write(storages)


def test_capped_child_loads_a_real_checkpoint():
    assert _capped_load(os.path.join(FIXTURES, "tensors_legacy.pth")) == "loaded"


def test_tensor_repeating_one_element_37_gib_is_refused(tmp_path):
    # shape 100000 x 100000 with stride 0 over a 1-element storage: 37.3 GiB of float32 when copied out
    path = _checkpoint_with(tmp_path, _tensor(0, (100_000, 100_000), (0, 0), 1),
                            storage_values=np.ones(1, np.float32))
    assert os.path.getsize(path) < 1024
    outcome = _capped_load(path)
    assert outcome.startswith("CheckpointFormatError: tensor 'w' declares shape (100000, 100000)"), outcome


def test_legacy_storage_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "legacy_bomb.pth"
    main = b"\x80\x02}" + _str("w") + _tensor(0, (1,), (1,), 1) + b"s."
    _legacy_stream(path, main, ["0"], struct.pack("<q", 10 ** 10) + b"\x00" * 4)   # 40 GB declared, 4 bytes there
    assert os.path.getsize(path) < 1024
    outcome = _capped_load(path)
    assert outcome.startswith("CheckpointFormatError: "), outcome
    assert "storage '0' declares 10,000,000,000 elements" in outcome


def test_pickle_string_longer_than_the_file_is_refused(tmp_path):
    path = tmp_path / "binbytes_bomb.pth"
    main = b"\x80\x04\x8e" + struct.pack("<Q", 40 * 2**30) + b"xx."   # BINBYTES8 declaring 40 GiB
    _legacy_stream(path, main, [], b"")
    outcome = _capped_load(path)
    assert outcome.startswith("CheckpointFormatError: ") and "declares 42,949,672,960 bytes" in outcome, outcome


def test_zip_record_declaring_more_than_the_file_is_refused(tmp_path):
    path = _checkpoint_with(tmp_path, _tensor(0, (2,), (1,), 2), storage_values=np.arange(2, dtype=np.float32))
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    data = bytearray(open(path, "rb").read())
    huge = struct.pack("<I", 0xFFFFFFF0)
    # the local header (offset 18: compressed, 22: uncompressed size) and the central directory entry (20, 24)
    data[info.header_offset + 18:info.header_offset + 26] = huge + huge
    central = data.rindex(b"PK\x01\x02")
    assert data[central + 46:central + 46 + len("archive/data/0")] == b"archive/data/0"
    data[central + 20:central + 28] = huge + huge
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(torch_pickle.CheckpointFormatError, match="'archive/data/0' declares 4,294,967,280 bytes"):
        torch_pickle.load(path)
