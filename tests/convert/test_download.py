"""Pretrained weights by name, served from a loopback HTTP server: the file lands in the cache once, a wrong hash is
refused and not kept, and without a server the error names the URL and the path to put the file."""
import functools
import hashlib
import http.server
import os
import shutil
import socket
import threading

import ml_collections
import numpy as np
import pytest

from date_jax.convert import download, pretrained, torch_pickle

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FIXTURE = os.path.join(FIXTURES, "tensors_zip.pth")


def _sha8(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:8]


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server for `tmp_path/served`, counting GET requests; shut down at the end of the test."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {"dir": served, "url": f"http://127.0.0.1:{httpd.server_address[1]}", "requests": requests}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "pretrained"


def test_named_weights_download_once_into_the_cache(server, cache, monkeypatch):
    name = f"tiny_resnet-{_sha8(FIXTURE)}.pth"
    shutil.copy(FIXTURE, server["dir"] / name)
    monkeypatch.setitem(download.MODEL_ZOO, "open-mmlab://test/tiny_resnet", f"https://example.invalid/x/{name}")
    monkeypatch.setenv(download.BASE_URL_ENV, server["url"] + "/")

    path = download.fetch("open-mmlab://test/tiny_resnet")
    assert path == str(cache / name) and os.listdir(cache) == [name]
    assert server["requests"] == [f"/{name}"]
    expected = torch_pickle.load(FIXTURE)
    loaded = torch_pickle.load(path)
    assert sorted(loaded) == sorted(expected)
    np.testing.assert_array_equal(loaded["transposed"], expected["transposed"])

    assert download.fetch("open-mmlab://test/tiny_resnet") == path
    assert len(server["requests"]) == 1            # the second use reads the cache


def test_a_plain_url_is_fetched_the_same_way(server, cache):
    name = f"weights-{_sha8(FIXTURE)}.pth"
    shutil.copy(FIXTURE, server["dir"] / name)
    assert download.fetch(f"{server['url']}/{name}") == str(cache / name)


def test_wrong_hash_is_refused_and_not_kept(server, cache, monkeypatch):
    # the published name promises sha256 788b5fa3...; the server sends other bytes under that name
    shutil.copy(FIXTURE, server["dir"] / "resnet50_caffe-788b5fa3.pth")
    monkeypatch.setenv(download.BASE_URL_ENV, server["url"])
    with pytest.raises(download.WeightsDownloadError, match=r"has SHA-256 [0-9a-f]{16}\.\.\., not the 788b5fa3"):
        download.fetch("open-mmlab://detectron/resnet50_caffe")
    assert os.listdir(cache) == []


def test_a_corrupt_cached_file_is_fetched_again(server, cache):
    name = f"weights-{_sha8(FIXTURE)}.pth"
    shutil.copy(FIXTURE, server["dir"] / name)
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"truncated")
    path = download.fetch(f"{server['url']}/{name}")
    assert _sha8(path) == _sha8(FIXTURE) and len(server["requests"]) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message_names_the_url_and_the_path(cache, monkeypatch):
    base = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv(download.BASE_URL_ENV, base)
    with pytest.raises(download.WeightsDownloadError) as raised:
        download.fetch("torchvision://resnet50")
    message = str(raised.value)
    assert f"{base}/resnet50-0676ba61.pth" in message
    assert str(cache / "resnet50-0676ba61.pth") in message
    assert "\n" not in message and os.listdir(cache) == []


def test_default_urls_and_cache_without_overrides(monkeypatch):
    monkeypatch.delenv(download.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    assert download.url_for("open-mmlab://detectron/resnet101_caffe") == \
        "https://download.openmmlab.com/pretrain/third_party/resnet101_caffe-3ad79236.pth"
    assert download.url_for("torchvision://resnet101") == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    assert download.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "date_jax", "pretrained")
    assert download.expected_hash("resnet50_caffe-788b5fa3.pth") == "788b5fa3"
    assert download.expected_hash("resnet50.pth") is None
    with pytest.raises(download.WeightsDownloadError, match="known names: open-mmlab://detectron/resnet101_caffe"):
        download.url_for("open-mmlab://detectron/resnet18")


def test_init_from_backbone_takes_a_name(server, cache, monkeypatch):
    name = f"tiny_resnet-{_sha8(FIXTURE)}.pth"
    shutil.copy(FIXTURE, server["dir"] / name)
    monkeypatch.setitem(download.MODEL_ZOO, "torchvision://tiny", f"https://example.invalid/{name}")
    monkeypatch.setenv(download.BASE_URL_ENV, server["url"])
    loaded = []
    monkeypatch.setattr(pretrained, "load_backbone", lambda path, config, variables: loaded.append(path) or variables)
    config = ml_collections.ConfigDict({"init_from": {"backbone": "torchvision://tiny", "checkpoint": ""}})
    variables = {"params": {}}
    assert pretrained.apply_init_from(config, variables) is variables
    assert loaded == [str(cache / name)]

    monkeypatch.setenv(download.BASE_URL_ENV, f"http://127.0.0.1:{_closed_port()}")
    config.init_from.backbone = "open-mmlab://detectron/resnet50_caffe"
    with pytest.raises(download.WeightsDownloadError, match="put the file at .*resnet50_caffe-788b5fa3.pth"):
        pretrained.apply_init_from(config, variables)
