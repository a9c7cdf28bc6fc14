"""The package's rooms import downward only (docs/design.md): a table of which room may import which, checked
against every import statement (top-level and inside functions) of every module of `date_jax`."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "date_jax"

# room -> the rooms it may import (a room is a top-level module or sub-package of date_jax).
BASE = {"boxes", "priors", "config", "runtime", "sharding", "draw", "checkpoints", "workdir_lock"}
ALLOWED = {
    **{room: set() for room in BASE},
    "cli": {"runtime"},
    "models": {"boxes", "priors"},
    "assign": {"boxes", "priors", "models"},
    "losses": {"boxes", "models"},
    "decode": {"boxes", "priors", "models"},
    "data": set(),
    "convert": {"models"},
    "predictor": {"models", "decode", "runtime", "sharding"},
    "inference": {"predictor", "checkpoints", "decode", "draw", "data", "models"},
    "export": {"models", "decode", "checkpoints", "inference", "predictor", "data", "config"},
    "evaluation": {"data", "predictor", "decode", "draw", "checkpoints", "models"},
    "train": BASE | {"models", "assign", "losses", "decode", "data", "convert", "predictor", "evaluation"},
    "commands": None,      # the entry points may import anything
}
# Only the two drivers, the training loop and the evaluation run, import both checkpoints and the evaluators.
DRIVERS = {"date_jax/train/loop.py", "date_jax/evaluation/run.py"}


def imported_rooms(path: pathlib.Path) -> set[str]:
    """The date_jax rooms a module imports anywhere in its body (absolute `date_jax.x` imports)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "date_jax" else [f"date_jax.{a.name}" for a in node.names]
        rooms |= {name.split(".")[1] for name in names if name.startswith("date_jax.")}
    return rooms


def room_of(path: pathlib.Path) -> str:
    """`models` for date_jax/models/head.py, `losses` for date_jax/losses.py."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_room_is_in_the_table():
    assert {room_of(p) for p in MODULES if p.name != "__init__.py" or p.parent != PACKAGE} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path):
    room = room_of(path)
    if ALLOWED.get(room) is None:
        return
    upward = imported_rooms(path) - ALLOWED[room] - {room}
    assert not upward, f"{path.relative_to(PACKAGE.parent)} ({room}) imports {sorted(upward)}"


def test_only_the_drivers_import_checkpoints_and_evaluators():
    both = set()
    for path in MODULES:
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names = {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 for a in n.names}
        uses_checkpoints = "date_jax.checkpoints" in names or "date_jax.checkpoints" in modules
        uses_evaluators = ("date_jax.evaluation.evaluators" in names or "date_jax.evaluation.evaluators" in modules)
        if uses_checkpoints and uses_evaluators:
            both.add(str(path.relative_to(PACKAGE.parent)))
    assert both <= DRIVERS, both - DRIVERS


def test_the_checker_sees_an_upward_import(tmp_path):
    """A module of the models room importing train must be reported (the check can fail)."""
    module = tmp_path / "date_jax" / "models" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from date_jax.train import loop\n    return loop\n")
    assert imported_rooms(module) - ALLOWED["models"] == {"train"}
