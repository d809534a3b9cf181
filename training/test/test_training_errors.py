"""The training package's errors share ivf_perception's base, so ``ivf-train`` catches one type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ivf_training
from ivf_perception.errors import IvfPerceptionError


def test_every_public_training_error_derives_from_the_base() -> None:
    errors = {}
    for info in pkgutil.walk_packages(ivf_training.__path__, prefix="ivf_training."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and not name.startswith("_")
                    and issubclass(cls, Exception) and not issubclass(cls, Warning)):
                errors[f"{module.__name__}.{name}"] = cls
    names = {name.rpartition(".")[2] for name in errors}
    assert {"CheckpointError", "ConfigError", "PerceptionWeightsError"} <= names, names
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, IvfPerceptionError))
    assert not outside, f"error classes that do not derive from IvfPerceptionError: {outside}"
    for cls in errors.values():
        assert issubclass(cls, ValueError), cls  # `except ValueError` callers keep working
