"""The ONNX cache: one export per (weights, size, exporter), reused, corrupt files re-exported;
and the metadata round trip of :func:`export_onnx` / :func:`read_onnx_metadata`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.export import cache as cache_module
from ivf_perception.export import cached_onnx, default_cache_dir, export_onnx, onnx_metadata, read_onnx_metadata
from ivf_perception.export.onnx import ONNX_FORMAT, OnnxExportError, file_sha256
from ivf_perception.models.base import FusionSegModel, FusionSegOutput

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")

SIZE = dict(height=32, width=48)


class TinyFusion(FusionSegModel):
    """A two-convolution stand-in: the cache logic does not depend on the architecture, and it
    exports in a second (every registered variant's export is checked in test_export_variants)."""

    variant = "tiny_standin"
    preset = "test"
    input_multiple = 16

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fuse = torch.nn.Conv2d(4, 3, 1)
        self.head = torch.nn.Conv2d(4, num_classes, 1)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        x = torch.cat((rgb, thermal), dim=1)
        return FusionSegOutput(torch.sigmoid(self.fuse(x)), self.head(x))


@pytest.fixture
def tiny_weights(tmp_path: Path) -> tuple[TinyFusion, Path]:
    model = TinyFusion().eval()
    info = WeightsInfo(variant="tiny_standin", preset="test", num_classes=3, classes=["a", "b", "c"],
                       palette=[1, 2, 3], recipe={"ignore_index": 255})
    return model, save_weights(model.state_dict(), tmp_path / "w" / "tiny.safetensors", info)


@pytest.fixture
def counted_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The real export, with every call recorded (to tell a reuse from a re-export)."""
    calls: list[Path] = []
    real = cache_module.export_onnx

    def counting(model: torch.nn.Module, path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(model, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_module, "export_onnx", counting)
    return calls


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IVF_PERCEPTION_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IVF_PERCEPTION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ivf_perception"


def test_cache_exports_once_then_reuses_and_repairs(tiny_weights: tuple[TinyFusion, Path], tmp_path: Path,
                                                     counted_exports: list[Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    model, weights = tiny_weights
    first = cached_onnx(model, weights, **SIZE, cache_dir=tmp_path)
    assert first.parent == tmp_path / "onnx" and first.name.startswith("tiny_standin-test-32x48-")
    meta = read_onnx_metadata(first)
    assert meta["format"] == ONNX_FORMAT and meta["input_size"] == "32x48"
    assert meta["weights_sha256"] == file_sha256(weights) and meta["ignore_index"] == 255
    assert meta["classes"] == ["a", "b", "c"] and meta["palette"] == [1, 2, 3]
    assert meta["num_classes"] == 3 and meta["input_multiple"] == 16 and meta["variant"] == "tiny_standin"
    mtime = first.stat().st_mtime_ns

    assert cached_onnx(model, weights, **SIZE, cache_dir=tmp_path) == first
    assert len(counted_exports) == 1 and first.stat().st_mtime_ns == mtime  # reused, not re-exported

    first.write_bytes(first.read_bytes()[:1000])  # a truncated file (a crash mid-copy, a full disk)
    with caplog.at_level(logging.WARNING, logger="ivf_perception.export.cache"):
        again = cached_onnx(model, weights, **SIZE, cache_dir=tmp_path)
    assert again == first and len(counted_exports) == 2
    assert "unusable, exporting it again" in caplog.text
    assert read_onnx_metadata(again)["cache_key"] == meta["cache_key"]
    assert not list((tmp_path / "onnx").glob("*.tmp"))

    dynamic = cached_onnx(model, weights, height=None, width=None, dynamic=True, cache_dir=tmp_path)
    assert dynamic != first and read_onnx_metadata(dynamic)["input_size"] == "dynamic"
    assert len(counted_exports) == 3


def test_key_separates_sizes_and_random_models(tmp_path: Path, counted_exports: list[Path]) -> None:
    torch.manual_seed(1)
    a = TinyFusion().eval()
    torch.manual_seed(2)
    b = TinyFusion().eval()
    # A random model is keyed by a hash of its state dict: different tensors, different files.
    assert cache_module._state_dict_sha256(a) != cache_module._state_dict_sha256(b)
    assert cache_module._state_dict_sha256(a) == cache_module._state_dict_sha256(a)
    key = cache_module.onnx_cache_key
    assert key("tiny", a, "w", "32x48") != key("tiny", a, "w", "dynamic") != key("tiny", a, "v", "dynamic")
    path_a = cached_onnx(a, None, **SIZE, cache_dir=tmp_path)
    assert cached_onnx(b, None, **SIZE, cache_dir=tmp_path) != path_a
    assert cached_onnx(a, None, **SIZE, cache_dir=tmp_path) == path_a and len(counted_exports) == 2
    assert read_onnx_metadata(path_a)["weights_sha256"] == ""


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="nope.safetensors: weights file not found"):
        cached_onnx(TinyFusion(), tmp_path / "nope.safetensors", **SIZE, cache_dir=tmp_path)
    with pytest.raises(OnnxExportError, match="needs height and width"):
        cached_onnx(TinyFusion(), None, height=None, width=None, cache_dir=tmp_path)


def test_onnx_metadata_prefers_given_class_table(test_weights: Path) -> None:
    model, _ = build_model_from_weights(test_weights)
    meta = onnx_metadata(model, test_weights, class_names=["a", "b"], palette=[1, 2])
    assert json.loads(meta["classes"]) == ["a", "b"] and json.loads(meta["palette"]) == [1, 2]
    assert meta["variant"] == "test_s4fusion" and meta["preset"] == "test"  # the registry name, from the sidecar
    assert all(isinstance(v, str) for v in meta.values())


def test_bad_sizes_are_refused_before_export(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match=r"not divisible by tiny_standin's input_multiple 16; use 48x64"):
        export_onnx(TinyFusion(), tmp_path / "x.onnx", height=40, width=50)
    with pytest.raises(OnnxExportError, match="needs --height and --width"):
        export_onnx(TinyFusion(), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [None, b"", b"not an onnx model at all \x00\xff" * 10])
def test_read_metadata_names_the_bad_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OnnxExportError, match=r"bad\.onnx"):
        read_onnx_metadata(path)


def test_read_metadata_refuses_a_foreign_onnx_file(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxExportError, match=r"other\.onnx: not an ivf_perception ONNX export"):
        read_onnx_metadata(path)
