"""The backend seam: name lookup, errors, and the eager backend matching the model's own call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine
from ivf_perception.engine.backends import BackendContext, BackendError, create_backend
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
