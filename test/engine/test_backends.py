"""The backend seam: name lookup, errors, the eager backend matching the model's own call, and every
other backend equal to it (compile, onnxruntime), fixed-size padding, ONNX weights files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine, EngineError, WeightsError
from ivf_perception.engine.backends import BackendContext, BackendError, create_backend
from ivf_perception.engine.postprocess import logits_to_labels
from ivf_perception.engine.preprocess import pad_to
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.models import build_model


def test_unknown_backend_names_the_known_ones() -> None:
    model = build_model("s4fusion", preset="test", num_classes=3)
    with pytest.raises(BackendError, match="unknown inference backend 'tpu'.*torch"):
        create_backend("tpu", BackendContext(model, torch.device("cpu"), "fp32"))


def test_engine_rejects_unknown_backend_before_any_frame() -> None:
    with pytest.raises(BackendError, match="'nope'"):
        Engine("s4fusion", preset="test", num_classes=3, device="cpu", backend="nope")


def test_torch_backend_is_the_models_forward() -> None:
    torch.manual_seed(0)
    engine = Engine("s4fusion", preset="test", num_classes=3, device="cpu", backend="torch")
    assert engine.describe()["backend"] == "torch"
    rgb = torch.rand(1, 3, 32, 32)
    thermal = torch.rand(1, 1, 32, 32)
    got = engine.backend.run(rgb, thermal)
    with torch.no_grad():
        expected = engine.model(rgb, thermal)
    torch.testing.assert_close(got.fused, expected.fused)
    assert got.logits is not None and expected.logits is not None
    torch.testing.assert_close(got.logits, expected.logits)
    result = engine.infer(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))
    assert result.fused.shape == (32, 32, 3) and result.labels is not None


# ---------------------------------------------------------------------- configuration and errors


def test_every_registered_backend_is_a_pipeline_choice() -> None:
    from ivf_perception.engine.backends import BACKEND_MODULES
    from ivf_perception.engine.config import INFERENCE_BACKENDS

    assert set(BACKEND_MODULES) <= set(INFERENCE_BACKENDS)
    assert {"torch", "compile", "onnxruntime"} <= set(BACKEND_MODULES)


def test_missing_onnxruntime_names_the_pip_install(monkeypatch: pytest.MonkeyPatch, test_weights: Path) -> None:
    """onnxruntime is installed here: a None entry in sys.modules makes its import fail as if it were not."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        Engine("auto", weights=test_weights, device="cpu", backend="onnxruntime")


def test_onnxruntime_refuses_precisions_it_cannot_run(test_weights: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(BackendError, match="precision bf16 has no onnxruntime path.*use precision fp32"):
        Engine("auto", weights=test_weights, device="cpu", precision="bf16", backend="onnxruntime")


def test_pad_to_replicates_edges_and_two_steps_equal_one() -> None:
    images = torch.rand(2, 3, 5, 7)
    once = pad_to(images, (16, 16))
    assert once.shape == (2, 3, 16, 16)
    torch.testing.assert_close(once[..., :5, :7], images)
    torch.testing.assert_close(once[..., 15, 6], images[..., 4, 6])  # bottom edge row repeated
    torch.testing.assert_close(pad_to(pad_to(images, (8, 8)), (16, 16)), once)
    with pytest.raises(ValueError, match="cannot pad 5x7 images to the smaller size 4x8"):
        pad_to(images, (4, 8))


# ---------------------------------------------------------------------- compile


@pytest.mark.slow
def test_compile_backend_equals_torch(test_weights: Path) -> None:
    """torch.compile with the aot_eager compiler: Dynamo's graph capture and our wrapper (inference mode,
    autocast, float outputs) without Inductor's C++ code generation, which takes ~5 minutes for even the
    micro model on a 2-core CI machine; Inductor and CUDA graphs run in the gpu-marked test below."""
    eager = Engine("auto", weights=test_weights, device="cpu")
    compiled = Engine(eager.model, device="cpu", backend="compile", backend_options={"compile_backend": "aot_eager"})
    assert compiled.describe()["compiler"] == "aot_eager" and compiled.describe()["compile_mode"] == "default"
    rgb, thermal = torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48)
    got, expected = compiled.infer_tensors(rgb, thermal), eager.infer_tensors(rgb, thermal)
    torch.testing.assert_close(got.fused, expected.fused, atol=1e-5, rtol=1e-5)
    assert got.logits is not None and expected.logits is not None
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_compile_backend_with_cuda_graphs_equals_torch(test_weights: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    eager = Engine("auto", weights=test_weights, device="cuda")
    compiled = Engine(eager.model, device="cuda", backend="compile")
    assert compiled.describe()["compile_mode"] == "reduce-overhead"
    rgb, thermal = torch.rand(1, 3, 64, 96, device="cuda"), torch.rand(1, 1, 64, 96, device="cuda")
    first = compiled.infer_tensors(rgb, thermal)
    second = compiled.infer_tensors(rgb.flip(-1), thermal.flip(-1))  # a replay must not overwrite `first`
    expected = eager.infer_tensors(rgb, thermal)
    torch.testing.assert_close(first.fused, expected.fused, atol=1e-4, rtol=1e-3)
    assert not torch.equal(first.fused, second.fused)


# ---------------------------------------------------------------------- onnxruntime


def _labels_agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((logits_to_labels(a) == logits_to_labels(b)).mean())


def test_onnxruntime_equals_torch_and_pads_to_its_fixed_size(test_weights: Path, onnx_cache: tuple[Path, Path],
                                                             onnx_size: tuple[int, int]) -> None:
    cache, onnx_path = onnx_cache
    eager = Engine("auto", weights=test_weights, device="cpu")
    ort = Engine("auto", weights=test_weights, device="cpu", backend="onnxruntime",
                 backend_options={"cache_dir": str(cache)})
    assert ort.backend.fixed_size is None, "ordinary weights: exported at the first batch's size"
    rgb, thermal = torch.rand(2, 3, *onnx_size), torch.rand(2, 1, *onnx_size)
    got, expected = ort.infer_tensors(rgb, thermal), eager.infer_tensors(rgb, thermal)
    assert ort.backend.fixed_size == onnx_size
    assert ort.describe()["onnx_file"] == str(onnx_path), "the session fixture's cached export was reused"
    assert float((got.fused - expected.fused).abs().max()) <= 1e-4
    assert got.logits is not None and expected.logits is not None
    assert _labels_agree(got.logits, expected.logits) >= 0.999

    # a smaller image is padded (edge replication) to the fixed size and cropped back, never resized
    rng = np.random.default_rng(1)
    small_rgb, small_th = rng.integers(0, 256, (40, 50, 3), np.uint8), rng.integers(0, 256, (40, 50), np.uint8)
    result = ort.infer(small_rgb, small_th)
    assert result.fused.shape == (40, 50, 3) and result.labels is not None and result.labels.shape == (40, 50)
    padded_rgb = np.pad(small_rgb, ((0, 24), (0, 46), (0, 0)), mode="edge")
    padded_th = np.pad(small_th, ((0, 24), (0, 46)), mode="edge")
    reference = eager.infer(padded_rgb, padded_th)
    assert np.abs(result.fused.astype(int) - reference.fused[:40, :50]).max() <= 1
    assert (result.labels == reference.labels[:40, :50]).mean() >= 0.999

    with pytest.raises(EngineError, match=f"input 80x96 .* larger than the 64x96 .*{onnx_path.name}"):
        ort.infer(np.zeros((80, 90, 3), np.uint8), np.zeros((80, 90), np.uint8))


def test_onnx_weights_run_without_a_torch_model(test_weights: Path, onnx_cache: tuple[Path, Path],
                                                onnx_size: tuple[int, int]) -> None:
    _, onnx_path = onnx_cache
    engine = Engine("auto", weights=onnx_path, device="cpu", backend="onnxruntime")
    assert engine.model is None and engine.describe()["parameters"] is None
    assert (engine.variant, engine.preset, engine.num_classes) == ("test_s4fusion", "test", 9)
    assert engine.class_names == list(MFNET_CLASSES) and engine.palette == list(MFNET_PALETTE)
    assert engine.backend.fixed_size == onnx_size, "known from the file, before any frame"
    eager = Engine("auto", weights=test_weights, device="cpu")
    rgb, thermal = torch.rand(1, 3, *onnx_size), torch.rand(1, 1, *onnx_size)
    got, expected = engine.infer_tensors(rgb, thermal), eager.infer_tensors(rgb, thermal)
    assert float((got.fused - expected.fused).abs().max()) <= 1e-4
    engine.release()


def test_mismatched_onnx_weights_are_refused_naming_the_file(onnx_cache: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx_path = onnx_cache
    name = re.escape(str(onnx_path))
    with pytest.raises(WeightsError, match=f"{name} holds weights of variant 'test_s4fusion' but variant 's4fusion'"):
        Engine("s4fusion", weights=onnx_path, device="cpu", backend="onnxruntime")
    with pytest.raises(WeightsError, match=f"{name} was trained for 9 classes but num_classes=3"):
        Engine("auto", weights=onnx_path, num_classes=3, device="cpu", backend="onnxruntime")
    with pytest.raises(EngineError, match=f"class_names has 2 names but the model has 9 classes of {name}"):
        Engine("auto", weights=onnx_path, class_names=["a", "b"], device="cpu", backend="onnxruntime")
    with pytest.raises(BackendError, match="backend 'torch' runs a PyTorch model.*ONNX file.*onnxruntime"):
        Engine("auto", weights=onnx_path, device="cpu", backend="torch")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a protobuf")
    with pytest.raises(WeightsError, match=re.escape(str(foreign))):
        Engine("auto", weights=foreign, device="cpu", backend="onnxruntime")
