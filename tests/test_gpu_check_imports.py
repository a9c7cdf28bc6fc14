"""benchmarks/gpu_check.sh's Python path needs nothing a bare accelerator image lacks: the scripts it calls run (tiny
model) with TensorFlow, tfds, clu, the COCO evaluators, OpenCV, Pillow and torch made unimportable, and the same
blocker stops a snippet that does import one of them (so the check cannot pass vacuously)."""
import json
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"
# Stock JAX (what an accelerator host runs: no CPU tuning) and XLA's cheapest CPU code generation: the test is about
# which modules the path imports, and this halves the compile of the train step.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "pycocotools", "faster_coco_eval", "torch", "torchvision",
           "cv2", "PIL")

# Runs each (script, *argv) as __main__ in one interpreter after putting a finder first on sys.meta_path that refuses
# the BLOCKED top-level packages, then checks none of them got in some other way (a .pth file, a C extension).
HARNESS = """
import importlib.abc
import json
import runpy
import sys

BLOCKED = set(json.loads(sys.argv[1]))
RUNS = json.loads(sys.argv[2])


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"blocked on the accelerator path: {name}")
        return None


sys.meta_path.insert(0, Blocker())
for script, *argv in RUNS:
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
leaked = sorted({name.partition(".")[0] for name in sys.modules} & BLOCKED)
assert not leaked, f"imported despite the blocker: {leaked}"
print("harness: all runs passed")
"""


def run_blocked(runs: list[list[str]], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """Run HARNESS over `runs` ([script, *argv] each) in a fresh interpreter using this tree's date_jax, on the CPU
    with stock JAX, as an accelerator host would (no date-jax CPU tuning)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks")]), JAX_PLATFORMS="cpu",
               DATE_JAX_CPU_TUNING="0", XLA_FLAGS=FAST_COMPILE)
    argv = [sys.executable, "-c", HARNESS, json.dumps(BLOCKED), json.dumps(runs)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_gpu_check_scripts_run_without_the_blocked_packages(tmp_path):
    train_json, inference_json = tmp_path / "gpu_train_step.json", tmp_path / "gpu_inference.json"
    runs = [
        [str(REPO / "benchmarks/train_step.py"), "--tiny", "--variant", "f", "--size", "128", "128", "--batch", "1",
         "--dtype", "bfloat16", "--max-boxes", "4", "--gts", "2", "--steps", "1", "--repeats", "1",
         "--out", str(train_json)],
        [str(REPO / "benchmarks/inference.py"), "--tiny", "--variant", "f", "--size", "128", "128", "--batches", "1",
         "--dtype", "bfloat16", "--steps", "1", "--repeats", "1", "--out", str(inference_json)],
        [str(REPO / "benchmarks/gpu_check_summary.py"), str(tmp_path)],
    ]
    # The runs cover every Python script gpu_check.sh calls: a new one there must be added here.
    called = set(re.findall(r"benchmarks/(\w+\.py)", GPU_CHECK.read_text()))
    assert called == {pathlib.Path(run[0]).name for run in runs}

    result = run_blocked(runs, tmp_path)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "harness: all runs passed" in result.stdout
    assert json.loads(train_json.read_text())["date"]["steps_timed"] == 1
    assert list(json.loads(inference_json.read_text())["batches"]) == ["1"]
    summary = result.stdout[result.stdout.index("gpu_check summary"):].splitlines()
    assert summary[2].split()[:3] == ["train", "step", "1"]
    assert summary[3].split()[:3] == ["predict", "(NMS-free)", "1"]


def test_the_blocker_stops_a_path_that_imports_a_blocked_package(tmp_path):
    # The training loop's module imports clu (metric writers) and, through the input pipeline, TensorFlow.
    importer = tmp_path / "importer.py"
    importer.write_text("import date_jax.train.loop\n")

    result = run_blocked([[str(importer)]], tmp_path)

    assert result.returncode != 0
    blocked = re.findall(r"blocked on the accelerator path: (\w+)", result.stderr)
    assert blocked and blocked[0] in BLOCKED, result.stderr[-3000:]
    assert "harness: all runs passed" not in result.stdout
