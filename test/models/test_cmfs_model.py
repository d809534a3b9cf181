"""CMFS end to end: text features and region maps, ablations, the engine and GPU parity (the shared
forward contract: test_model_contract)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine
from ivf_perception.models import build_model, list_models
from ivf_perception.models.cmfs import ABLATIONS, CMFS
from ivf_perception.models.cmfs.mia import channel_shuffle
from ivf_perception.models.layers.color import rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.ops import has_cuda_scan


def _inputs(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def _random_text(model: CMFS, seed: int = 1) -> torch.Tensor:
    return torch.randn(model.num_prompts, 512, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> CMFS:
    torch.manual_seed(0)
    m = build_model("test_cmfs", num_classes=9)
    m.set_text_features(_random_text(m))
    return m


def test_registered() -> None:
    assert {"cmfs", "test_cmfs"} <= set(list_models("*cmfs"))


@pytest.mark.parametrize("train", [True, False])
def test_moe_balance_loss_only_in_training(model: CMFS, train: bool) -> None:
    """The MMFE load-balancing term is a training extra (the shared contract: test_model_contract)."""
    model.train(train)
    with torch.no_grad():
        out = model(*_inputs(2, 64, 96))
    assert ("moe_balance_loss" in out.aux) == train
    model.train()


def test_region_gate_follows_the_text_features(model: CMFS) -> None:
    """Different prompts give different region maps; the same prompts the same map."""
    mmfi = model.mia[0].mmfi
    guide = torch.rand(2, model.mia[0].dim, 16, 24, generator=torch.Generator().manual_seed(3))
    text_a, text_b = _random_text(model, 1), _random_text(model, 2)
    with torch.no_grad():
        map_a = mmfi.region_map(guide, text_a)
        map_b = mmfi.region_map(guide, text_b)
        map_a2 = mmfi.region_map(guide, text_a.clone())
    assert map_a.shape == (2, 1, 16, 24)
    assert torch.equal(map_a, map_a2)
    assert (map_a - map_b).abs().max() > 1e-4
    # one value per region: 5×5 regions on a 16×24 map, pixel y in region floor(y·5/16)
    rows = (torch.arange(16) * 5) // 16
    cols = (torch.arange(24) * 5) // 24
    for r in range(5):
        for c in range(5):
            block = map_a[0, 0][rows == r][:, cols == c]
            assert torch.allclose(block, block.flatten()[0].expand_as(block))


def test_model_output_depends_on_text_features() -> None:
    torch.manual_seed(0)
    m = build_model("test_cmfs", num_classes=5).eval()
    rgb, thermal = _inputs(1, 64, 64)
    m.set_text_features(_random_text(m, 1))
    with torch.no_grad():
        a = m(rgb, thermal).logits
    m.set_text_features(_random_text(m, 2))
    with torch.no_grad():
        b = m(rgb, thermal).logits
    assert (a - b).abs().max() > 1e-6


def test_region_map_geometry_is_not_fixed_at_build_time(model: CMFS) -> None:
    """The public code's region geometry only fits 480×640; ours follows the feature size."""
    gate = model.mia[0].mmfi.region_gate
    text = _random_text(model)
    for h, w in [(8, 8), (13, 29), (40, 30)]:
        assert gate(torch.rand(1, model.mia[0].dim, h, w), text).shape == (1, 1, 5, 5)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_builds_and_runs(ablation: str) -> None:
    torch.manual_seed(0)
    m = build_model("test_cmfs", num_classes=9, ablation=ablation)
    full = build_model("test_cmfs", num_classes=9)
    rgb, thermal = _inputs(2, 64, 96)
    out = m(rgb, thermal)
    assert out.fused.shape == (2, 3, 64, 96) and out.logits.shape == (2, 9, 64, 96)
    assert m.config()["model_args"]["ablation"] == ablation
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params < sum(p.numel() for p in full.parameters())
    names = {n for n, _ in m.named_parameters()}
    if ablation == "I":
        assert not any(".mamba." in n for n in names)
    elif ablation == "II":
        assert not any("region_gate" in n or ".guide." in n for n in names)
    elif ablation == "III":
        assert not any(n.startswith("fsc_") for n in names)
    elif ablation == "IV":
        assert all(type(f).__name__ == "ConcatConvFusion" for f in m.mmfe)
        assert float(out.aux["moe_balance_loss"]) == 0.0
    elif ablation == "V":
        assert m.fusion_head is None
        ycbcr = rgb_to_ycbcr(rgb)
        expected = ycbcr_to_rgb(torch.cat((0.5 * (ycbcr[:, :1] + thermal), ycbcr[:, 1:]), 1)).clamp(0, 1)
        torch.testing.assert_close(out.fused, expected)


def test_unknown_preset_and_ablation_are_named() -> None:
    with pytest.raises(ValueError, match="Unknown CMFS preset 'huge'"):
        build_model("cmfs", preset="huge")
    with pytest.raises(ValueError, match="Unknown CMFS ablation 'VI'"):
        build_model("test_cmfs", ablation="VI")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("test_cmfs", num_classes=0)


def test_channel_shuffle_interleaves_the_two_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    with pytest.raises(ValueError, match="not divisible"):
        channel_shuffle(torch.zeros(1, 5, 2, 2))


def test_thermal_stem_variants_agree_after_checkpoint_style_summing() -> None:
    """A 1-channel stem with the 3-channel stem's weights summed equals repeating the thermal image."""
    torch.manual_seed(0)
    three = build_model("test_cmfs", thermal_in_chans=3).eval()
    one = build_model("test_cmfs", thermal_in_chans=1).eval()
    state = three.state_dict()
    state["encoder_thermal.patch_embed.0.weight"] = state["encoder_thermal.patch_embed.0.weight"].sum(1, keepdim=True)
    one.load_state_dict(state)
    rgb, thermal = _inputs(1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(one(rgb, thermal).logits, three(rgb, thermal).logits, rtol=1e-4, atol=1e-5)


def test_engine_runs_cmfs_on_an_odd_size(model: CMFS) -> None:
    engine = Engine(model, device="cpu")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    result = engine.infer(rgb, thermal)
    assert result.fused.shape == (70, 90, 3)
    assert result.labels.shape == (70, 90)
    assert engine.variant == "cmfs"


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and has_cuda_scan()), reason="needs CUDA and mamba-ssm")
def test_cuda_scan_equals_cpu_path() -> None:
    torch.manual_seed(0)
    cpu = build_model("test_cmfs", num_classes=9, scan_backend="chunked").eval()
    cuda = build_model("test_cmfs", num_classes=9, scan_backend="cuda").eval()
    cuda.load_state_dict(cpu.state_dict())
    cuda = cuda.cuda()
    rgb, thermal = _inputs(2, 96, 128)
    with torch.no_grad():
        ref = cpu(rgb, thermal)
        got = cuda(rgb.cuda(), thermal.cuda())
    torch.testing.assert_close(got.logits.cpu(), ref.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.fused.cpu(), ref.fused, rtol=1e-3, atol=1e-3)
