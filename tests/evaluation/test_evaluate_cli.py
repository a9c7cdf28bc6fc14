"""evaluate.py end to end on a tiny checkpoint, its error messages, and the Python API against its output."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from date_jax import checkpoints
from date_jax import config as config_lib
from date_jax.data import synthetic
from date_jax.evaluation import predictions
from date_jax.evaluation import run as run_lib
from date_jax.models import detector
from tests.helpers import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(root):
    cfg = config_lib.base_config()
    cfg.model = config_lib.tiny_model_config(num_classes=4)
    cfg.data.source = "synthetic"
    cfg.data.root = str(root)
    cfg.data.synthetic.update(num_train=2, num_val=3, image_size=64)
    cfg.data.update(test_short_size=64, max_size=128, eval_batch_size=2, max_boxes=8)
    cfg.num_summary_images = 2
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = tiny_config(root / "data")
    variables = random_variables(cfg)
    work = str(root / "run")
    checkpoints.save_variables(work, 3, variables, cfg)
    checkpoints.save_variables(work, 7, variables, cfg)
    checkpoints.save_classes(work, list(synthetic.CATEGORIES), [1, 2, 3, 4])     # as training writes them
    return work, cfg


MULTI_PROCESS_WORKER = """
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from date_jax import checkpoints
from date_jax.evaluation import evaluators
from date_jax.models import detector
from date_jax.predictor import Predictor
work, out = sys.argv[3], sys.argv[4]
config = checkpoints.load_config(work)
config.data.eval_batch_size = 4            # 2 per process, one per local device
_, variables = checkpoints.restore_variables(work, 7, detector.abstract_variables(config))
metric = evaluators.DetectionEvaluator(config, config.test.metric)
rows = metric.predict(Predictor(config).load(variables))
result = metric.score(rows) if jax.process_index() == 0 else evaluators.Result(detections=[])
metrics = evaluators.share_metrics(result.metrics, metric.names)
detections = result.detections
with open(f"{out}.{jax.process_index()}.json", "w") as f:
    json.dump(dict(metrics=metrics, detections=detections, devices=jax.local_device_count()), f)
"""


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def cli_run(workdir):
    work, _ = workdir
    return run_cli(f"--workdir={work}", "--step=all")


@pytest.mark.slow
def test_end_to_end_all_steps(workdir, cli_run):
    work, cfg = workdir
    proc = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3: AP=" in proc.stdout and "step 7: AP=" in proc.stdout
    ann_file, _ = synthetic.split_paths(cfg.data.root, "val")
    for step in (3, 7):
        out = os.path.join(work, "eval", str(step))
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        with open(os.path.join(out, "detections.json")) as f:
            detections = json.load(f)
        assert metrics["step"] == step and len(detections) == 3 * cfg.test.max_per_img
        assert {d["category_id"] for d in detections} <= {1, 2, 3, 4}          # original ids, not labels
        assert all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in detections)
        # the stored metrics are pycocotools on the stored detections
        gt = COCO(ann_file)
        ev = COCOeval(gt, gt.loadRes(os.path.join(out, "detections.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        np.testing.assert_allclose([metrics[k] for k in ("AP", "AP50", "AR100", "ARl")], ev.stats[[0, 1, 8, 11]])
        assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["image_0.png", "image_1.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(work, "eval")))


def test_python_api_matches_evaluate_output(workdir, cli_run):
    from date_jax.data.codecs import decode_rgb
    from date_jax.inference import Detector

    work, cfg = workdir
    with open(os.path.join(work, "eval", "7", "detections.json")) as f:
        detections = json.load(f)
    ann_file, image_dir = synthetic.split_paths(cfg.data.root, "val")
    gt = COCO(ann_file)
    image_id = sorted(gt.getImgIds())[0]
    path = os.path.join(image_dir, gt.loadImgs([image_id])[0]["file_name"])
    with open(path, "rb") as f:
        image = decode_rgb(f.read())      # the pixels the evaluation pipeline saw
    [result] = Detector.from_workdir(work).predict([image])
    mine = sorted((d for d in detections if d["image_id"] == image_id), key=lambda d: -d["score"])[:10]
    np.testing.assert_allclose(result["scores"][:10], [d["score"] for d in mine], rtol=1e-4)
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
    np.testing.assert_allclose(result["boxes"][:10], xyxy, atol=0.05)
    assert result["names"][0] in ("circle", "square", "triangle", "cross")
    assert result["boxes"][:, 2].max() <= image.shape[1] and result["boxes"][:, 3].max() <= image.shape[0]


def test_missing_step_lists_available(workdir):
    work, cfg = workdir
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .*available steps: \[3, 7\]"):
        run_lib.evaluate_workdir(cfg, work, "5")


def test_workdir_without_checkpoints(tmp_path, workdir):
    _, cfg = workdir
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        run_lib.evaluate_workdir(cfg, str(tmp_path / "empty"), "latest")


def test_checkpoint_that_does_not_fit_the_config(workdir):
    work, cfg = workdir
    other = tiny_config(cfg.data.root)
    other.model.num_classes = 7
    with pytest.raises(ValueError, match=r"params/bbox_head/predictors_0/conv_cls/bias has shape \(4,\) in the "
                                         r"checkpoint but \(7,\)"):
        checkpoints.restore_variables(work, 7, detector.abstract_variables(other))
    other = tiny_config(cfg.data.root)
    other.model.o2o = "3dmf"
    with pytest.raises(ValueError, match="no params/bbox_head/predictors_0/filter/bias"):
        checkpoints.restore_variables(work, None, detector.abstract_variables(other))


def test_bad_step_flag(workdir):
    with pytest.raises(ValueError, match="'latest' or 'all'"):
        run_lib.parse_step("newest")


@pytest.mark.slow
def test_two_processes_gather_the_same_detections(workdir, cli_run, tmp_path):
    """Two jax.distributed processes with two CPU devices each: process 0 gets every image's detections."""
    work, _ = workdir
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO,
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = str(tmp_path / "result")
    procs = [subprocess.Popen([sys.executable, "-c", MULTI_PROCESS_WORKER, f"localhost:{port}", str(i), work, out],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    errors = "\n".join(line for log in logs for line in log.splitlines() if "Error" in line or "error" in line)
    assert all(p.returncode == 0 for p in procs), errors[-5000:]
    with open(os.path.join(work, "eval", "7", "detections.json")) as f:
        single = json.load(f)
    with open(os.path.join(work, "eval", "7", "metrics.json")) as f:
        single_metrics = json.load(f)
    results = []
    for i in range(2):
        with open(f"{out}.{i}.json") as f:
            results.append(json.load(f))
    assert results[0]["devices"] == 2 and results[1]["detections"] == []
    assert results[0]["metrics"] == results[1]["metrics"]                     # broadcast to every process
    for name, value in results[0]["metrics"].items():
        assert value == pytest.approx(single_metrics[name], abs=1e-6)
    def key(d):
        return (d["image_id"], -d["score"], d["category_id"])
    multi = sorted(results[0]["detections"], key=key)
    single = sorted(single, key=key)
    assert [d["image_id"] for d in multi] == [d["image_id"] for d in single]
    np.testing.assert_allclose([d["score"] for d in multi], [d["score"] for d in single], rtol=1e-4)


def test_watch_evaluates_new_checkpoints_then_times_out(tmp_path, monkeypatch, workdir):
    _, cfg = workdir
    listings = iter([[3, 7], [3, 7], [3, 7, 9], [3, 7, 9], [3, 7, 9], [3, 7, 9]])
    monkeypatch.setattr(run_lib.checkpoints, "available_steps", lambda w: next(listings))
    seen = []

    class Recorder:
        """Stands in for the evaluation of one checkpoint: records which steps the watch loop asks for."""

        def __init__(self, config, workdir):
            self.writer = type("Writer", (), {"close": lambda self: None})()

        def evaluate_if_present(self, step):
            seen.append(step)
            return {}

    monkeypatch.setattr(run_lib, "Run", Recorder)
    clock = iter(range(0, 1000, 10))                       # every look at the clock is 10 s later
    monkeypatch.setattr(run_lib.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(run_lib.time, "sleep", lambda s: None)
    results = run_lib.evaluate_workdir(cfg, str(tmp_path), "latest", watch=True, watch_interval_s=1,
                                         watch_timeout_s=25)
    assert seen == [7, 9] and sorted(results) == [7, 9]


def test_ground_truth_from_batches_for_sources_without_a_json():
    rows = dict(image_id=np.array([11, 12]), original_hw=np.array([[100, 200], [50, 60]]),
                gt_boxes=np.array([[[10, 20, 30, 60], [0, 0, 0, 0]], [[1, 2, 3, 4], [5, 5, 15, 25]]], np.float32),
                gt_labels=np.array([[1, 0], [0, 2]]), gt_mask=np.array([[True, False], [True, True]]))
    gt = predictions.ground_truth_from_rows(rows, [7, 8, 9])
    assert gt["images"] == [dict(id=11, height=100, width=200), dict(id=12, height=50, width=60)]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in gt["annotations"]] == [
        (11, 8, [10.0, 20.0, 20.0, 40.0], 800.0), (12, 7, [1.0, 2.0, 2.0, 2.0], 4.0),
        (12, 9, [5.0, 5.0, 10.0, 20.0], 200.0)]
    assert [c["id"] for c in gt["categories"]] == [7, 8, 9]


def test_watch_skips_a_step_that_vanished_before_it_was_read(workdir):
    """Training deletes old checkpoints: a step that is listed and then gone is skipped (None), not fatal; a step
    that exists but cannot be read is still an error."""
    work, cfg = workdir
    run = run_lib.Run(cfg, work)
    assert run.evaluate_if_present(5) is None               # never written (or deleted by training meanwhile)
    assert sorted(run.evaluate_if_present(7)) == sorted(cfg_metric_names(cfg))
    run.writer.close()


def cfg_metric_names(cfg):
    from date_jax.evaluation import evaluators
    return evaluators.metric_names(cfg)
