"""UP-Fusion through the Engine: any size (padding to 8), weights round trip with its buffers,
fusion-only weights (no labels), bf16 autocast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine
from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.models import build_model


def _pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("test_upfusion", num_classes=9)
    model.set_text_embedding(torch.randn(512))
    info = WeightsInfo(variant="test_upfusion", preset="test", num_classes=9, model_args=model.config()["model_args"])
    return save_weights(model.state_dict(), tmp_path_factory.mktemp("w") / "up.safetensors", info)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (65, 17)])
def test_any_size_is_padded_and_cropped_back(weights: Path, size: tuple[int, int]) -> None:
    engine = Engine("test_upfusion", weights=weights, device="cpu")
    res = engine.infer(*_pair(*size))
    assert res.fused.shape == (*size, 3) and res.labels.shape == size
    assert res.labels.max() < 9


def test_weights_round_trip_keeps_embedding_and_permutations(weights: Path) -> None:
    model, info = build_model_from_weights(weights)
    assert info.variant == "test_upfusion" and model.has_text_embedding()
    fresh = build_model("test_upfusion", num_classes=9)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.permutations(), model.permutations()))
    fresh.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.permutations(), model.permutations()))


def test_fusion_only_weights_run_without_labels(tmp_path: Path) -> None:
    model = build_model("test_upfusion", num_classes=0)
    info = WeightsInfo(variant="test_upfusion", preset="test", num_classes=0, model_args=model.config()["model_args"])
    path = save_weights(model.state_dict(), tmp_path / "fusion.safetensors", info)
    res = Engine("test_upfusion", weights=path, device="cpu").infer(*_pair(24, 32))
    assert res.fused.shape == (24, 32, 3)


def test_bf16_engine_runs_with_fp32_scoring(weights: Path) -> None:
    """bf16 is autocast: the weights stay fp32 and the scoring paths opt out (spec §1.11), so the
    mixed graph runs; whether bf16 changes the selections of trained weights is not checked here."""
    engine = Engine("test_upfusion", weights=weights, device="cpu", precision="bf16")
    res = engine.infer(*_pair(24, 32))
    assert res.fused.shape == (24, 32, 3) and res.fused.dtype == np.uint8
