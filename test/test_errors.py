"""One error base: every public error class of the package is an IvfPerceptionError that keeps its
builtin base, and the CLI turns any of them into one line and exit code 2."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch

import ivf_perception
from ivf_perception.cli._common import user_errors
from ivf_perception.cli.main import main as cli_main
from ivf_perception.engine import WeightsError
from ivf_perception.errors import IvfPerceptionError


def _public_error_classes(package) -> dict[str, type[BaseException]]:  # noqa: ANN001
    """Every public exception class defined in ``package`` and its modules (warnings excluded)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and not name.startswith("_")
                    and issubclass(cls, Exception) and not issubclass(cls, Warning)):
                found[f"{module.__name__}.{name}"] = cls
    return found


def test_every_public_error_class_derives_from_the_base() -> None:
    errors = _public_error_classes(ivf_perception)
    assert len(errors) >= 20, sorted(errors)  # the walk found the package's errors
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, IvfPerceptionError))
    assert not outside, f"error classes that do not derive from IvfPerceptionError: {outside}"


@pytest.mark.parametrize(("name", "builtin"), [
    ("ivf_perception.engine.weights.WeightsError", ValueError),
    ("ivf_perception.engine.engine.EngineError", ValueError),
    ("ivf_perception.engine.preprocess.InputError", ValueError),
    ("ivf_perception.checks.ShapeError", ValueError),
    ("ivf_perception.io.errors.IVFIOError", ValueError),
    ("ivf_perception.io.errors.BagNotFoundError", FileNotFoundError),
    ("ivf_perception.io.tensor_files.TensorFileNotFoundError", FileNotFoundError),
    ("ivf_perception.models.registry.UnknownModelError", KeyError),
    ("ivf_perception.models.mafs.trunk.TrunkWeightsError", ValueError),
    ("ivf_perception.models.cmfs.text_features.TextFeaturesError", ValueError),
])
def test_builtin_bases_are_kept(name: str, builtin: type[BaseException]) -> None:
    module, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, IvfPerceptionError) and issubclass(cls, builtin)


def test_cli_turns_a_package_error_into_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    weights = tmp_path / "broken.safetensors"
    weights.write_bytes(b"not a weights file")
    folder = tmp_path / "images"
    folder.mkdir()
    rc = cli_main(["fuse", "--ir", str(folder), "--vi", str(folder), "--out", str(tmp_path / "out"),
                   "--weights", str(weights), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ivf-perception fuse: error: cannot read engine weights") and str(weights) in err
    assert "corrupt or truncated safetensors file" in err and "Traceback" not in err


def test_user_errors_catches_the_base_and_lets_bugs_through(capsys: pytest.CaptureFixture[str]) -> None:
    class _Custom(IvfPerceptionError, ValueError):
        pass

    @user_errors("ivf-perception test")
    def refuses(kind: type[Exception]) -> int:
        raise kind("the reason")

    for kind in (_Custom, WeightsError):
        assert refuses(kind) == 2
        assert capsys.readouterr().err == "ivf-perception test: error: the reason\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        refuses(ZeroDivisionError)


def test_pickled_weights_are_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(1)}, weights)
    folder = tmp_path / "images"
    folder.mkdir()
    rc = cli_main(["fuse", "--ir", str(folder), "--vi", str(folder), "--out", str(tmp_path / "out"),
                   "--weights", str(weights), "--device", "cpu"])
    assert rc == 2 and "pickled checkpoints (.pt) are refused" in capsys.readouterr().err
