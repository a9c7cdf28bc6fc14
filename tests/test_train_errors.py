"""Every user mistake on `train.py`'s command line ends in one `error: ...` line naming the thing and the fix, a
non-zero exit code and no traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = ["--config", "configs/demo.py"]


def _train(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,says", [
    (["--config", "configs/no_such.py", "--workdir", "{w}"], "configs/no_such.py"),
    (DEMO + ["--workdir", "{w}", "--config.optim.lr=0.1"], "Unknown config key 'optim.lr'"),
    (DEMO + ["--workdir", "{w}", "--config.data.batch_size=eight"], "batch_size"),
    (DEMO + ["--workdir", "{w}", "--config.model.o2o=point2"], "config.model.o2o='point2'"),
    (DEMO + ["--workdir", "{w}", "--config.data.source=coco", "--config.data.root={w}/nowhere"],
     "annotation file"),
    (DEMO + ["--workdir", "{w}", "--config.init_from.backbone={w}/missing.pth"], "config.init_from.backbone"),
    (DEMO + ["--workdir", "{w}", "extra_argument"], "unexpected arguments"),
])
def test_user_mistake_is_one_error_line(tmp_path, args, says):
    result = _train(tmp_path, *(a.format(w=tmp_path) for a in args))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-3000:]


@pytest.mark.parametrize("args,says", [(DEMO, "--workdir"), (DEMO + ["--workdir", "w", "--epochs=3"], "epochs")])
def test_missing_or_unknown_flag_is_one_error_line(tmp_path, args, says):
    result = _train(tmp_path, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-3000:]
