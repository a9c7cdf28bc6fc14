"""The built wheel: its metadata (dependencies, extras, commands, licence) and its files (every module, the configs).

The wheel is built once per session from a copy of the project files (so the checkout gets no build/ or egg-info),
without build isolation, so no network is needed. The expectations below are written out here, not read from
pyproject.toml, except where the test checks that two files agree (lower bounds against constraints.txt).
"""
from __future__ import annotations

import configparser
import email.parser
import email.policy
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
PROJECT_DIRS = ("date_jax", "configs")

RUNTIME = {"jax", "flax", "optax", "orbax-checkpoint", "ml-collections", "absl-py", "clu", "numpy", "pillow",
           "opencv-python-headless", "tensorflow-cpu", "tensorflow-datasets", "importlib-resources", "tensorboard",
           "pycocotools", "faster-coco-eval"}
EXTRAS = {"dev": {"pytest", "ruff", "matplotlib", "scipy", "setuptools"},
          "cuda": {"jax[cuda12]"},
          "tpu": {"jax[tpu]"},
          "torch": {"torch", "torchvision"}}
COMMANDS = {
    "date-jax-train": "date_jax.commands.train:main",
    "date-jax-evaluate": "date_jax.commands.evaluate:main",
    "date-jax-demo": "date_jax.commands.demo:main",
    "date-jax-convert": "date_jax.commands.convert_checkpoint:main",
    "date-jax-crowdhuman-to-coco": "date_jax.commands.crowdhuman_to_coco:main",
    "date-jax-make-synthetic": "date_jax.commands.make_synthetic_dataset:main",
    "date-jax-export": "date_jax.commands.export:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built by `pip wheel` from a copy of the project (no dependencies, no build isolation)."""
    src = tmp_path_factory.mktemp("src")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, src / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, cwd=src, env=env, timeout=300)
    [path] = out.glob("date_jax-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def dist_info_file(wheel: zipfile.ZipFile, name: str) -> str:
    """Text of `<dist-info>/<name>` in the wheel."""
    [path] = [n for n in wheel.namelist() if re.fullmatch(r"date_jax-[^/]+\.dist-info/" + re.escape(name), n)]
    return wheel.read(path).decode()


def metadata(wheel: zipfile.ZipFile) -> email.message.EmailMessage:
    """The core metadata (METADATA) of the wheel, parsed."""
    return email.parser.Parser(policy=email.policy.compat32).parsestr(dist_info_file(wheel, "METADATA"))


def requirements(wheel: zipfile.ZipFile) -> list[Requirement]:
    """Every Requires-Dist of the wheel."""
    return [Requirement(r) for r in metadata(wheel).get_all("Requires-Dist")]


def extra_of(req: Requirement) -> str:
    """The extra a requirement belongs to ('' for a runtime dependency)."""
    match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(req.marker or ""))
    return match.group(1) if match else ""


def label(req: Requirement) -> str:
    """Normalised name with its extras, e.g. 'jax[cuda12]'."""
    name = canonicalize_name(req.name)
    return f"{name}[{','.join(sorted(req.extras))}]" if req.extras else name


def test_runtime_dependencies_are_declared(wheel):
    runtime = {label(r) for r in requirements(wheel) if not extra_of(r)}
    assert runtime == RUNTIME


def test_extras_exist_and_hold_their_packages(wheel):
    assert set(metadata(wheel).get_all("Provides-Extra")) == set(EXTRAS)
    for extra, expected in EXTRAS.items():
        assert {label(r) for r in requirements(wheel) if extra_of(r) == extra} == expected, extra


def test_every_dependency_has_a_range(wheel):
    for req in requirements(wheel):
        assert any(s.operator == ">=" for s in req.specifier), f"{req} has no lower bound"


def test_lower_bounds_are_the_constrained_versions():
    """pyproject.toml's lower bounds are the versions constraints.txt records, and those versions satisfy the ranges."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for text in declared:
        req = Requirement(text)
        pinned = pins[canonicalize_name(req.name)]
        [lower] = [s.version for s in req.specifier if s.operator == ">="]
        assert lower == pinned, f"{req.name}: lower bound {lower}, constraints.txt {pinned}"
        assert req.specifier.contains(pinned), f"{req.name}=={pinned} outside {req.specifier}"


def test_console_commands_are_declared(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info_file(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == COMMANDS


def test_licence_is_declared_and_shipped(wheel):
    meta = metadata(wheel)
    assert "Apache-2.0" in (meta.get("License", "") + meta.get("License-Expression", ""))
    [shipped] = [n for n in wheel.namelist() if re.fullmatch(r"date_jax-[^/]+\.dist-info/(licenses/)?LICENSE", n)]
    assert wheel.read(shipped) == (ROOT / "LICENSE").read_bytes()


def test_configs_ship_as_date_jax_configs(wheel):
    configs = sorted((ROOT / "configs").glob("*.py"))
    assert any(p.name == "demo.py" for p in configs)
    for path in configs:
        assert wheel.read(f"date_jax/configs/{path.name}") == path.read_bytes(), path.name


def test_every_module_of_the_source_tree_is_in_the_wheel(wheel):
    """The package list in pyproject.toml is written by hand: a package missing there would be missing here."""
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "date_jax").rglob("*.py") if "__pycache__" not in p.parts}
    shipped = {n for n in wheel.namelist() if n.startswith("date_jax/") and not n.startswith("date_jax/configs/")}
    assert source == shipped
