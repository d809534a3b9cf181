"""MAFS modules as the public code builds them (issue 15): the DEM mixing rule and gate grouping,
the half-instance-norm coupling subnets and dense aggregation, the AFM depth, the residual ASPP
with rates 1-4, the paper preset's parameter count, and older weights loading as they were built."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.models import build_model
from ivf_perception.models.mafs.encoder import AFM, DEM
from ivf_perception.models.mafs.invertible import HalfInstanceNormSubnet, InvertibleFusionDecoder
from ivf_perception.models.mafs.model import LEGACY_ARGS
from ivf_perception.models.mafs.seg_decoder import ASPP, ResidualASPP
from ivf_perception.models.registry import pinned_args


def _dem_with_known_weights(mix: str) -> DEM:
    """A DEM whose complementary gate is 1 (so v' = v, t' = t) and whose spatial softmax gives
    a_v = 1/4, a_t = 3/4 everywhere (scores 0 and ln 3)."""
    dem = DEM(4, mix=mix, conv="pairs")
    with torch.no_grad():
        last = dem.gate[-1]
        last.weight.zero_()
        last.bias.fill_(40.0)
        for conv, bias in ((dem.score_rgb, 0.0), (dem.score_thermal, math.log(3.0))):
            conv.weight.zero_()
            conv.bias.fill_(bias)
    return dem


def test_dem_public_mixing_rule_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    v_out, t_out = _dem_with_known_weights("public")(v, t)
    torch.testing.assert_close(v_out, 0.25 * v + 0.75 * t)  # a_v v' + a_t t'
    torch.testing.assert_close(t_out, 0.75 * t)  # a_t t'
    v_out, t_out = _dem_with_known_weights("residual")(v, t)
    torch.testing.assert_close(v_out, v + 0.75 * t)
    torch.testing.assert_close(t_out, t + 0.25 * v)


def test_dem_gate_convolution_groups() -> None:
    assert DEM(8, conv="pairs").local.groups == 8  # public: Conv2d(2C, 2C, 7, groups=C)
    assert DEM(8, conv="depthwise").local.groups == 16
    with pytest.raises(ValueError, match="DEM mix"):
        DEM(8, mix="sum")


def test_paper_preset_uses_the_public_modules() -> None:
    model = build_model("mafs", preset="paper", device="meta")
    assert all(d.mix == "public" and d.local.groups == d.local.in_channels // 2 for d in model.encoder.dem)
    assert all(len(afm.embed_rgb) == 3 and len(afm.embed_thermal) == 3 for afm in model.fuser.afm)
    head = model.fusion_head
    assert head.aggregation == "public" and head.aggregate.in_channels == 4 * 32  # input + blocks 3-5
    assert all(isinstance(b.phi, HalfInstanceNormSubnet) for b in head.blocks)
    aspp = model.seg_head.aspp
    assert isinstance(aspp, ResidualASPP) and aspp.rates == (1, 2, 3, 4)
    assert [b.dilation for b in aspp.branches] == [(1, 1), (1, 1), (2, 2), (3, 3), (4, 4)]
    # 126.69 M with the public modules (the paper reports 128.69 M; the public encoder build has
    # ~1.2 M of stage-II-dead modules we do not build); fusion decoder 0.163 M as the public one
    assert sum(p.numel() for p in model.parameters()) == 126_690_061
    assert sum(p.numel() for p in head.parameters()) == 162_657


def test_half_instance_norm_normalises_half_the_channels() -> None:
    net = HalfInstanceNormSubnet(4, 4, hidden=6)
    assert net.unit_1.norm is not None and net.unit_1.norm.num_features == 3
    seen: list[torch.Tensor] = []
    net.unit_1.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        net(torch.randn(2, 4, 8, 8) * 3 + 5)
    normed = seen[0]  # per image and channel: zero mean, unit variance (affine starts at 1, 0)
    assert normed.shape == (2, 3, 8, 8)
    torch.testing.assert_close(normed.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)


def test_public_dense_aggregation_reads_the_input_and_the_late_blocks() -> None:
    torch.manual_seed(0)
    dec = InvertibleFusionDecoder(8, num_blocks=4, subnet="hin", aggregation="public")
    x = torch.randn(1, 8, 6, 6)
    outs = dec.flow(x)
    expected = (torch.tanh(dec.head(dec.aggregate(torch.cat([x, outs[2], outs[3]], dim=1)))) + 1) / 2
    torch.testing.assert_close(dec(x), expected)
    # the flow stays exactly invertible with instance-normed subnets
    torch.testing.assert_close(dec.inverse(outs[-1]), x, atol=1e-4, rtol=1e-4)


def test_residual_aspp_by_hand() -> None:
    """With all branch and squeeze weights zero the module is refine(x): the residual path."""
    aspp = ResidualASPP(4, (1, 2, 3, 4)).eval()
    with torch.no_grad():
        for conv in (*aspp.branches, aspp.squeeze):
            conv.weight.zero_()
            conv.bias.zero_()
        x = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(aspp(x), aspp.refine(x))
    assert isinstance(build_model("mafs", preset="small", device="meta").seg_head.aspp, ASPP)


def test_afm_units_switch() -> None:
    assert len(AFM(4, 8, units=3).embed_rgb) == 3
    with pytest.raises(ValueError, match="at least one conv unit"):
        AFM(4, 8, units=0)


def test_old_sidecar_loads_our_earlier_modules(tmp_path: Path) -> None:
    """Weights exported before the switches (no switch in model_args) rebuild with our earlier
    modules and load strictly; new exports pin every switch."""
    torch.manual_seed(0)
    old = build_model("test_mafs", **LEGACY_ARGS["test"]).eval()
    path = save_weights(old.state_dict(), tmp_path / "old.safetensors",
                        WeightsInfo(variant="test_mafs", preset="test", num_classes=9, model_args={}))
    loaded, _ = build_model_from_weights(path)
    args = loaded.config()["model_args"]
    assert (args["dem_mix"], args["inn_subnet"], args["aspp_form"], args["aspp_rates"]) == (
        "residual", "plain", "deeplab", [2, 4])
    rgb, thermal = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(rgb, thermal).fused, old(rgb, thermal).fused)
    new = build_model("test_mafs")
    pins = pinned_args("test_mafs", new)
    assert pins["dem_mix"] == "public" and pins["aspp_rates"] == [1, 2] and pins["inn_blocks"] == 3
    path = save_weights(new.state_dict(), tmp_path / "new.safetensors",
                        WeightsInfo(variant="test_mafs", preset="test", num_classes=9, model_args=pins))
    loaded, _ = build_model_from_weights(path)
    assert isinstance(loaded.seg_head.aspp, ResidualASPP)
    assert isinstance(loaded.fusion_head.blocks[0].eta, nn.Module)
