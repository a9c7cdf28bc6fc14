"""The same global batch gives the same parameters on 1 device, 8 devices, and two processes joined by
jax.distributed (all on CPU, in subprocesses)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "sharded_training_worker.py")


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _run(devices_in_process: int, mesh_devices: int, out: str, o2m: str = "fcos") -> None:
    subprocess.run([sys.executable, WORKER, "--devices", str(mesh_devices), "--out", out, "--o2m", o2m],
                   env=_env(devices_in_process), check=True, timeout=900, capture_output=True)


def _compare(a_path: str, b_path: str) -> None:
    a, b = np.load(a_path), np.load(b_path)
    assert set(a.files) == set(b.files)
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=2e-5)
    for name in a.files:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one") / "params.npz")
    _run(8, 1, out)
    return out


def test_eight_devices_equal_one_device(one_device, tmp_path):
    out = str(tmp_path / "eight.npz")
    _run(8, 8, out)
    _compare(one_device, out)
    assert np.load(out)["losses"][0] != np.load(out)["losses"][-1], "the steps must change the parameters"


def test_two_processes_equal_one_process(one_device, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "two.npz")
    procs = [subprocess.Popen([sys.executable, WORKER, "--devices", "4", "--out", out, "--coordinator",
                               f"localhost:{port}", "--num_processes", "2", "--process_id", str(i)],
                              env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    _compare(one_device, out)
