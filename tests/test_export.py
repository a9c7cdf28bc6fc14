"""tools/export.py on a tiny trained-like workdir: both artifacts, run in fresh processes without date_jax, reproduce
`Detector.predict`; the resize contract, the categories and the error lines of the command."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from date_jax import checkpoints, export
from date_jax import config as config_lib
from date_jax.data import buckets, synthetic, transforms
from date_jax.inference import Detector
from date_jax.models import detector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SIZE = (64, 96)       # the fixture config's landscape bucket: test short 64 / max 96, divisor 32
# Landscape originals whose test-transform size (64x96, 54x96, 64x91) lies in the 64x96 bucket, as Detector pads them.
LANDSCAPE = ((100, 150), (90, 160), (120, 170))
PORTRAIT = ((150, 100), (170, 120))


def tiny_config(data_root):
    cfg = config_lib.base_config()
    cfg.model = config_lib.tiny_model_config(num_classes=4)
    cfg.data.update(source="synthetic", root=str(data_root), test_short_size=64, max_size=96, bucket_divisor=32)
    cfg.data.synthetic.update(num_train=2, num_val=3, image_size=64)
    return cfg


def perturbed_variables(model, seed=0):
    """Fresh variables made to detect: the o2o class predictor gets N(0, 0.5) kernels and zero bias (scores spread
    over (0, 1) instead of sitting at prior_prob), and BatchNorm gets non-trivial statistics (padding matters)."""
    variables = jax.tree.map(np.asarray, detector.init_variables(model, jax.random.key(seed), INPUT_SIZE))
    rng = np.random.default_rng(seed)
    cls = variables["params"]["bbox_head"]["predictors_0"]["conv_cls"]
    cls["kernel"] = cls["kernel"] + rng.normal(0, 0.5, cls["kernel"].shape).astype(np.float32)
    cls["bias"] = np.zeros_like(cls["bias"])

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        if name.endswith("['mean']") or name.endswith("['bias']"):
            return x + rng.normal(0, 0.1, x.shape).astype(np.float32)
        if name.endswith("['var']") or name.endswith("['scale']"):
            return x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return x
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(perturb, variables["batch_stats"])
    return variables


def smooth_image(rng, hw):
    """uint8 RGB [h, w, 3]: a random low-frequency pattern (resizing it is not a no-op on noise)."""
    small = rng.integers(0, 256, (hw[0] // 8 + 2, hw[1] // 8 + 2, 3)).astype(np.float32)
    import cv2
    return np.clip(cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def run_python(code, *args, cwd, env_extra=None):
    """Run `code` in a fresh interpreter without the repository on its path; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def run_export_command(*flags):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "export.py"), *map(str, flags)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = tiny_config(root / "data")
    work = str(root / "run")
    checkpoints.save_variables(work, 7, perturbed_variables(detector.build_model(cfg)), cfg)
    checkpoints.save_classes(work, list(synthetic.CATEGORIES), [1, 2, 3, 4])       # as training writes them
    return work


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    """The command's output folder for `--format both --batch dynamic` at the default size."""
    out = tmp_path_factory.mktemp("artifacts") / "demo"
    result = run_export_command("--workdir", workdir, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported step 7" in result.stdout
    return str(out)


@pytest.fixture(scope="module")
def landscape():
    """Three landscape uint8 images of the LANDSCAPE sizes."""
    rng = np.random.default_rng(1)
    images = [smooth_image(rng, hw) for hw in LANDSCAPE]
    return images


def reference(workdir, images):
    results = Detector.from_workdir(workdir).predict(images)
    assert all(len(r["labels"]) >= 10 for r in results), [len(r["labels"]) for r in results]
    return results


def assert_matches(outputs, results):
    """Artifact outputs (dict of [B, ...] arrays) equal the Detector results: count, labels and order, boxes, scores."""
    for i, result in enumerate(results):
        n = int(outputs["num_detections"][i])
        assert n == len(result["labels"])
        np.testing.assert_array_equal(outputs["labels"][i, :n], result["labels"])
        np.testing.assert_allclose(outputs["boxes"][i, :n], result["boxes"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(outputs["scores"][i, :n], result["scores"], rtol=0, atol=1e-5)
        assert (outputs["labels"][i, n:] == -1).all() and (outputs["boxes"][i, n:] == 0).all()
        assert (outputs["scores"][i, n:] == 0).all()


STABLEHLO_CLIENT = """
import sys
import jax
import numpy as np
with open(sys.argv[1], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
inputs = np.load(sys.argv[2])
outputs = {}
for b in (3, 1):     # the symbolic batch: the whole batch, then the first image alone
    out = exported.call(inputs["images"][:b], inputs["image_hw"][:b], inputs["original_hw"][:b])
    outputs.update({f"{k}_{b}": np.asarray(v) for k, v in out.items()})
np.savez(sys.argv[3], **outputs)
print("date_jax imported:", any(m.split(".")[0] == "date_jax" for m in sys.modules))
"""

SAVEDMODEL_CLIENT = """
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
inputs = np.load(sys.argv[2])
out = serve(**{k: tf.constant(inputs[k]) for k in ("images", "image_hw", "original_hw")})
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
print("date_jax imported:", any(m.split(".")[0] == "date_jax" for m in sys.modules))
print("jax imported:", any(m.split(".")[0] in ("jax", "jaxlib") for m in sys.modules))
"""


def _serve_in_fresh_process(client, artifact, workdir, images, tmp_path):
    """Run `client` on `artifact` with the prepared `images` in a fresh process -> (its result, its outputs)."""
    inputs = export.prepare_images(images, checkpoints.load_config(workdir), INPUT_SIZE)
    np.savez(tmp_path / "inputs.npz", **inputs)
    result = run_python(client, artifact, tmp_path / "inputs.npz", tmp_path / "out.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, np.load(tmp_path / "out.npz")


def test_stablehlo_in_fresh_process_matches_detector(workdir, exported, landscape, tmp_path):
    result, out = _serve_in_fresh_process(STABLEHLO_CLIENT, os.path.join(exported, export.STABLEHLO_FILE), workdir,
                                          landscape, tmp_path)
    assert "date_jax imported: False" in result.stdout
    results = reference(workdir, landscape)
    assert_matches({k: out[f"{k}_3"] for k in export.OUTPUT_NAMES}, results)
    assert_matches({k: out[f"{k}_1"] for k in export.OUTPUT_NAMES}, results[:1])


def test_savedmodel_in_fresh_process_matches_detector(workdir, exported, landscape, tmp_path):
    result, out = _serve_in_fresh_process(SAVEDMODEL_CLIENT, os.path.join(exported, export.SAVEDMODEL_DIR), workdir,
                                          landscape, tmp_path)
    assert "date_jax imported: False" in result.stdout and "jax imported: False" in result.stdout
    assert sorted(out.files) == sorted(export.OUTPUT_NAMES)
    assert_matches(out, reference(workdir, landscape))


def test_metadata_describes_contract_and_categories(workdir, exported):
    with open(os.path.join(exported, export.METADATA_FILE)) as f:
        info = json.load(f)
    assert [c["name"] for c in info["categories"]] == list(synthetic.CATEGORIES)
    assert [c["id"] for c in info["categories"]] == [1, 2, 3, 4]
    assert [c["label"] for c in info["categories"]] == [0, 1, 2, 3]
    assert info["categories_from"] == os.path.join(workdir, checkpoints.CLASSES_FILE)   # the workdir, not the data
    assert info["input_size"] == list(INPUT_SIZE) and info["batch"] == "dynamic"
    assert info["inputs"]["images"]["shape"] == [None, 64, 96, 3] and info["inputs"]["images"]["dtype"] == "uint8"
    assert info["outputs"]["boxes"]["shape"] == [None, 100, 4]
    assert info["preprocessing"]["test_short_size"] == 64 and info["preprocessing"]["max_size"] == 96
    assert info["files"] == {"stablehlo": export.STABLEHLO_FILE, "savedmodel": export.SAVEDMODEL_DIR}
    assert info["source"]["step"] == 7 and info["config"]["model"]["num_classes"] == 4


def test_fixed_batch_portrait_size_matches_detector(workdir):
    """A fixed batch of 2 at the portrait bucket (96, 64), in-process: the detections of Detector on portrait images."""
    config = checkpoints.load_config(workdir)
    _, variables = checkpoints.restore_variables(workdir)
    rng = np.random.default_rng(2)
    images = [smooth_image(rng, hw) for hw in PORTRAIT]
    plan = transforms.plan_test(np.array(PORTRAIT)[:, 0], np.array(PORTRAIT)[:, 1],
                                transforms.scales_from_config(config.data))
    assert (buckets.bucket_shapes(plan.out_hw, 64, 96, 32) == (96, 64)).all()   # Detector pads them to 96x64 too
    exported = export.export_stablehlo(config, variables, (96, 64), batch=2, platforms=("cpu",))
    assert exported.in_avals[0].shape == (2, 96, 64, 3)
    inputs = export.prepare_images(images, config, (96, 64))
    np.testing.assert_array_equal(inputs["image_hw"], plan.out_hw)
    outputs = jax.tree.map(np.asarray, exported.call(inputs["images"], inputs["image_hw"], inputs["original_hw"]))
    assert_matches(outputs, reference(workdir, images))


def test_resized_hw_is_the_test_transform_capped_to_the_input_size():
    cfg = tiny_config("unused")
    # Hand-computed: f = min(96 / long, 64 / short, 64 / h, 96 / w); side -> floor(side * f + 0.5).
    np.testing.assert_array_equal(export.resized_hw(np.array([[100, 150], [90, 160], [150, 100], [32, 40]]), cfg,
                                                    (64, 96)),
                                  [[64, 96], [54, 96], [64, 43], [64, 80]])
    # Where the cap does not bind it is the evaluation's test transform.
    rng = np.random.default_rng(0)
    sizes = rng.integers(20, 400, (500, 2))
    sizes = sizes[sizes[:, 0] <= sizes[:, 1]]          # landscape or square: always fits the landscape bucket
    plan = transforms.plan_test(sizes[:, 0], sizes[:, 1], transforms.scales_from_config(cfg.data))
    np.testing.assert_array_equal(export.resized_hw(sizes, cfg, INPUT_SIZE), plan.out_hw)


def test_default_input_size_is_the_landscape_test_bucket():
    cfg = config_lib.base_config()                      # COCO: short 800, long 1333, divisor 128
    assert export.default_input_size(cfg) == (896, 1408)
    assert tuple(buckets.bucket_shapes(np.array([[800, 1333]]), 800, 1333, 128)[0]) == (896, 1408)


def test_categories_fall_back_when_annotations_are_missing(tmp_path):
    cfg = tiny_config(tmp_path / "absent")
    cfg.data.source = "coco"
    names, ids, source = export.category_table(cfg)
    assert names == ["class 0", "class 1", "class 2", "class 3"] and ids == [0, 1, 2, 3]
    assert source.startswith("fallback") and "not readable" in source


@pytest.mark.parametrize("case", ["no_workdir", "no_config", "broken_config", "no_checkpoint", "format", "size",
                                  "batch", "step"])
def test_command_user_mistakes_are_one_error_line(case, workdir, tmp_path):
    flags = ["--workdir", workdir, "--out", tmp_path / "out"]
    expected = {"format": "--format='onnx'", "size": "--size 100 96", "batch": "--batch='0'", "step": "step 99"}
    if case == "no_workdir":
        flags[1], expected[case] = tmp_path / "missing", "is not a directory"
    elif case == "no_config":
        flags[1], expected[case] = tmp_path, "config.json not found"
        os.makedirs(tmp_path, exist_ok=True)
    elif case == "broken_config":
        os.makedirs(tmp_path / "broken")
        (tmp_path / "broken" / "config.json").write_text("{\"model\": ")
        flags[1], expected[case] = tmp_path / "broken", "config.json"
    elif case == "no_checkpoint":
        os.makedirs(tmp_path / "empty")
        with open(os.path.join(workdir, "config.json")) as f:
            (tmp_path / "empty" / "config.json").write_text(f.read())
        flags[1], expected[case] = tmp_path / "empty", "no checkpoints"
    extra = {"format": ["--format", "onnx"], "size": ["--size", "100", "96"], "batch": ["--batch", "0"],
             "step": ["--step", "99"]}.get(case, [])
    result = run_export_command(*flags, *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected[case] in lines[0], result.stderr[-2000:]
