"""CMFS architecture as the public code runs it (issue 15): the MoE blocks' bidirectional Mamba,
and older weights (causal mixer, sidecars without the switch) still loading as they were built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.models import build_model
from ivf_perception.models.cmfs.mmfe import ResMoEBlock, SequenceMamba
from ivf_perception.models.layers.bimamba import BidirectionalMamba
from ivf_perception.models.registry import pinned_args, with_legacy_args


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_preset_has_the_public_packages_parameter_count() -> None:
    """135,156,232 parameters without CLIP: the public build with its shipped (bidirectional)
    mamba_ssm, FIDELITY_AUDIT CMFS row 57; the causal mixer gives 133,618,312."""
    paper = build_model("cmfs", preset="paper", device="meta")
    causal = build_model("cmfs", preset="paper", moe_mamba_bidirectional=False, device="meta")
    assert _count(paper) == 135_156_232
    assert _count(causal) == 133_618_312
    mixers = [m.token_mixer for m in paper.modules() if isinstance(m, ResMoEBlock)]
    assert len(mixers) == 8 and all(isinstance(m, BidirectionalMamba) for m in mixers)
    assert all(m.d_state == 64 and m.d_inner == 2 * m.d_model for m in mixers)


def test_bidirectional_mixer_sees_both_sides() -> None:
    """The causal mixer's first output ignores later tokens; the bidirectional one does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 12, 8)
    later = x.clone()
    later[:, 6:] += 1.0
    causal = SequenceMamba(8, d_state=4, scan_backend="ref")
    both = BidirectionalMamba(8, d_state=4, scan_backend="ref")
    torch.testing.assert_close(causal(x)[:, 0], causal(later)[:, 0])
    assert not torch.allclose(both(x)[:, 0], both(later)[:, 0])


def test_small_preset_keeps_the_causal_mixer() -> None:
    small = build_model("cmfs", preset="small", device="meta")
    assert all(isinstance(m.token_mixer, SequenceMamba) for m in small.modules() if isinstance(m, ResMoEBlock))


def test_sidecar_without_the_switch_loads_the_causal_model(tmp_path: Path) -> None:
    """Weights exported before the switch carry no ``moe_mamba_bidirectional``: they load as the
    causal model they are (strictly, every tensor), while a new export pins the switch."""
    torch.manual_seed(0)
    old = build_model("test_cmfs", moe_mamba_bidirectional=False).eval()
    old_args = {k: v for k, v in old.config()["model_args"].items() if k != "moe_mamba_bidirectional"}
    path = save_weights(old.state_dict(), tmp_path / "old.safetensors",
                        WeightsInfo(variant="test_cmfs", preset="test", num_classes=9, model_args=old_args))
    loaded, _ = build_model_from_weights(path)
    assert loaded.config()["model_args"]["moe_mamba_bidirectional"] is False
    rgb, thermal = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(rgb, thermal).fused, old(rgb, thermal).fused)

    new = build_model("test_cmfs", moe_mamba_bidirectional=True)
    assert pinned_args("test_cmfs", new) == {"moe_mamba_bidirectional": True}
    assert with_legacy_args("cmfs", "paper", {}) == {"moe_mamba_bidirectional": False}
    assert with_legacy_args("cmfs", "paper", {"moe_mamba_bidirectional": True}) == {"moe_mamba_bidirectional": True}
    path = save_weights(new.state_dict(), tmp_path / "new.safetensors",
                        WeightsInfo(variant="test_cmfs", preset="test", num_classes=9,
                                    model_args=pinned_args("test_cmfs", new)))
    loaded, _ = build_model_from_weights(path)
    assert loaded.config()["model_args"]["moe_mamba_bidirectional"] is True


def test_unknown_variant_in_legacy_lookup() -> None:
    with pytest.raises(KeyError, match="Unknown model"):
        with_legacy_args("no_such_model", "paper", {})
