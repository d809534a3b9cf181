"""smp-style base tester: one subclass per model family sets ``model_name`` and sizes.

Covers fusion-only builds, odd resolutions (actionable error), wrong channels and a save/load
round trip through the engine weight format. The forward contract every model shares (shapes,
ranges, padding, batch/item equivalence, gradients) is swept over the registry's ``test_*``
variants in ``test_model_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivf_perception.checks import ShapeError
from ivf_perception.engine.weights import WeightsInfo, load_weights, save_weights
from ivf_perception.models import build_model, list_models
from ivf_perception.models.registry import model_entrypoint


def package_models(pattern: str = "*") -> list[str]:
    """Registered models that this package defines.

    ``make test`` collects ``test/`` and ``training/test/`` in one run, and the training tests
    register a stand-in model of their own; checks about *our* families must not count it.
    """
    return [n for n in list_models(pattern) if model_entrypoint(n).__module__.startswith("ivf_perception.")]


DIMS = (4, 8, 12, 16)
"""Channels of a small four-stage encoder pyramid for head tests."""


def feature_pyramid(b: int, h: int, w: int, dims: tuple[int, ...] = DIMS, scale: float = 1.0) -> list[torch.Tensor]:
    """Encoder-like pyramid for an h×w image: strides 4, 8, 16, 32 with ceil rounding."""
    return [scale * torch.randn(b, c, -(-h // 2 ** (i + 2)), -(-w // 2 ** (i + 2))) for i, c in enumerate(dims)]


def assert_all_params_get_grads(module: torch.nn.Module) -> None:
    """Every parameter got a finite, non-zero gradient from the last backward pass."""
    missing = [n for n, p in module.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or float(p.grad.abs().sum()) == 0]
    assert not missing, f"no gradient reached {missing}"


class ModelTester:
    model_name: str = ""
    build_kwargs: dict = {}
    sizes: tuple[tuple[int, int], ...] = ((32, 48), (64, 32))

    def build(self, **kw) -> torch.nn.Module:
        return build_model(self.model_name, **{**self.build_kwargs, **kw})

    def inputs(self, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(b, 3, h, w), torch.rand(b, 1, h, w)

    def test_fusion_only(self) -> None:
        model = self.build(num_classes=0).eval()
        out = model(*self.inputs(1, *self.sizes[0]))
        assert out.logits is None

    def test_odd_resolution_error_says_what_to_pad_to(self) -> None:
        model = self.build()
        m = model.input_multiple
        with pytest.raises(ShapeError, match=rf"divisible by {m}.*pad the images to {2 * m}x{2 * m}"):
            model(*self.inputs(1, 2 * m - 3, 2 * m - 1))

    def test_wrong_channels(self) -> None:
        model = self.build()
        m = model.input_multiple
        with pytest.raises(ShapeError, match="thermal"):
            model(torch.rand(1, 3, m, m), torch.rand(1, 3, m, m))

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        model = self.build(num_classes=4).eval()
        info = WeightsInfo(variant=model.variant, preset=model.preset, num_classes=4,
                           model_args=model.config()["model_args"])
        path = save_weights(model.state_dict(), tmp_path / "w.safetensors", info)
        state, info2 = load_weights(path)
        clone = build_model(info2.variant, preset=info2.preset, num_classes=info2.num_classes, **info2.model_args)
        clone.load_state_dict(state)
        clone.eval()
        x = self.inputs(1, *self.sizes[0])
        torch.testing.assert_close(clone(*x).fused, model(*x).fused)
        torch.testing.assert_close(clone(*x).logits, model(*x).logits)
