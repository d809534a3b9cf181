"""The ONNX cache: one export per (weights, size, exporter), reused, corrupt files re-exported;
and the metadata round trip of :func:`export_onnx` / :func:`read_onnx_metadata`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ivf_perception.engine.weights import build_model_from_weights
from ivf_perception.export import cache as cache_module
from ivf_perception.export import cached_onnx, default_cache_dir, onnx_metadata, read_onnx_metadata
from ivf_perception.export.onnx import ONNX_FORMAT, OnnxExportError, file_sha256
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")

SIZE = dict(height=32, width=48)


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


def test_cache_exports_once_then_reuses_and_repairs(test_weights: Path, tmp_path: Path,
                                                     counted_exports: list[Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    model, _ = build_model_from_weights(test_weights)
    first = cached_onnx(model, test_weights, **SIZE, cache_dir=tmp_path)
    assert first.parent == tmp_path / "onnx" and first.name.startswith("test_s4fusion-test-32x48-")
    meta = read_onnx_metadata(first)
    assert meta["format"] == ONNX_FORMAT and meta["input_size"] == "32x48"
    assert meta["weights_sha256"] == file_sha256(test_weights)
    assert meta["classes"] == list(MFNET_CLASSES) and meta["palette"] == list(MFNET_PALETTE)
    assert meta["num_classes"] == len(MFNET_CLASSES) and meta["input_multiple"] == model.input_multiple
    mtime = first.stat().st_mtime_ns

    assert cached_onnx(model, test_weights, **SIZE, cache_dir=tmp_path) == first
    assert len(counted_exports) == 1 and first.stat().st_mtime_ns == mtime  # reused, not re-exported

    first.write_bytes(first.read_bytes()[:1000])  # a truncated file (a crash mid-copy, a full disk)
    with caplog.at_level(logging.WARNING, logger="ivf_perception.export.cache"):
        again = cached_onnx(model, test_weights, **SIZE, cache_dir=tmp_path)
    assert again == first and len(counted_exports) == 2
    assert "unusable, exporting it again" in caplog.text
    assert read_onnx_metadata(again)["cache_key"] == meta["cache_key"]
    assert not list((tmp_path / "onnx").glob("*.tmp"))


def test_key_separates_sizes_and_random_models(tmp_path: Path) -> None:
    from ivf_perception.models import build_model

    torch.manual_seed(1)
    a = build_model("test_s4fusion", num_classes=0).eval()
    torch.manual_seed(2)
    b = build_model("test_s4fusion", num_classes=0).eval()
    # A random model is keyed by a hash of its state dict: different tensors, different files.
    assert cache_module._state_dict_sha256(a) != cache_module._state_dict_sha256(b)
    assert cache_module._state_dict_sha256(a) == cache_module._state_dict_sha256(a)
    key = cache_module.onnx_cache_key
    assert key("s4fusion", a, "w", "32x48") != key("s4fusion", a, "w", "dynamic") != key("s4fusion", a, "v", "dynamic")
    path = cached_onnx(a, None, **SIZE, cache_dir=tmp_path)
    assert read_onnx_metadata(path)["weights_sha256"] == ""


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    from ivf_perception.models import build_model

    model = build_model("test_s4fusion", num_classes=0).eval()
    with pytest.raises(OnnxExportError, match="nope.safetensors: weights file not found"):
        cached_onnx(model, tmp_path / "nope.safetensors", **SIZE, cache_dir=tmp_path)


def test_onnx_metadata_prefers_given_class_table(test_weights: Path) -> None:
    model, _ = build_model_from_weights(test_weights)
    meta = onnx_metadata(model, test_weights, class_names=["a", "b"], palette=[1, 2])
    assert json.loads(meta["classes"]) == ["a", "b"] and json.loads(meta["palette"]) == [1, 2]
    assert meta["variant"] == "test_s4fusion" and meta["preset"] == "test"
    assert all(isinstance(v, str) for v in meta.values())


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
