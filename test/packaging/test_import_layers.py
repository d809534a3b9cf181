"""Imports point down: front doors → engine → io/models/metrics, never into ``cli/``.

DESIGN §1 promises one pipeline behind three front doors (the live node, bag replay, training).
That only holds while no front door borrows from another and the core never reaches up into a
command, so these tests read every module's imports (with ``ast``, nothing is executed) and fail
on an arrow that runs the wrong way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "ivf_perception"
TRAINING = REPO / "training" / "ivf_training"

FRONT_DOORS = ("ivf_perception.cli", "ivf_perception.nodes", "ivf_perception.replay")
CORE = ("engine", "io", "models", "metrics", "scenes", "sync.py", "checks.py", "errors.py", "baselines.py")


def _module_name(path: Path) -> str:
    root = TRAINING.parent if path.is_relative_to(TRAINING) else REPO
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import statement of one file."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # `from ivf_perception import cli` names a module too
                yield node.lineno, f"{name}.{alias.name}"


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def _py_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_relative_imports_resolve_to_package_modules() -> None:
    """Guards the checker itself: a relative import must map onto a real package path."""
    names = {name for path in _py_files(LIBRARY) for _, name in _imports(path)}
    assert "ivf_perception.engine.engine" in names
    assert not any(name.startswith(".") for name in names)


def test_nothing_outside_cli_imports_cli() -> None:
    files = [p for p in _py_files(LIBRARY) if "cli" not in p.relative_to(LIBRARY).parts]
    files += _py_files(TRAINING)
    assert _violations(files, ("ivf_perception.cli",)) == []


@pytest.mark.parametrize("door", ["nodes", "replay"])
def test_front_doors_do_not_import_each_other(door: str) -> None:
    others = tuple(d for d in FRONT_DOORS if d != f"ivf_perception.{door}")
    assert _violations(_py_files(LIBRARY / door), others) == []


def test_core_never_imports_a_front_door() -> None:
    files = [p for name in CORE for p in ([LIBRARY / name] if name.endswith(".py") else _py_files(LIBRARY / name))]
    assert len(files) > 50
    assert _violations(files, FRONT_DOORS) == []


def test_training_uses_only_the_shared_core() -> None:
    assert _violations(_py_files(TRAINING), FRONT_DOORS) == []


def test_robot_package_tests_do_not_import_the_training_package() -> None:
    """A robot installs ``ivf_perception`` without ``ivf_training``: its tests must run there."""
    tests = _py_files(REPO / "test")
    assert _violations(tests, ("ivf_training",)) == []
