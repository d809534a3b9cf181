"""S4Fusion family: the base tester plus S4Fusion-specific behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from base_tester import ModelTester, assert_all_params_get_grads

from ivf_perception.engine.engine import DEFAULT_WEIGHTS
from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.models import build_model
from ivf_perception.models.layers import get_norm_layer
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_perception.models.s4fusion import CMSA, LEGACY_ARGS, PRESET_ARGS, S4Fusion, checkpoint_filter_fn

PUBLIC = dict(patch_size=3, patch_overlap=1, cmsa_wiring="public")
"""The public code's embedding and wiring (the ``paper`` preset's switches)."""


class TestS4Fusion(ModelTester):
    model_name = "test_s4fusion"


class TestS4FusionPublicWiring(ModelTester):
    """Every generic check also for the public geometry (stride 3, multiple 12)."""

    model_name = "test_s4fusion"
    build_kwargs = PUBLIC
    sizes = ((36, 48), (24, 60))


def _gray_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A gray visible image and a thermal image, in [0.1, 0.9]: the visible image's neutral Cb/Cr
    leaves no RGB gamut clipping to blur comparisons of the fused luminance."""
    rgb = (torch.rand(1, 1, size, size) * 0.8 + 0.1).expand(1, 3, size, size)
    return rgb, torch.rand(1, 1, size, size) * 0.8 + 0.1


def test_untrained_model_is_the_pixel_average() -> None:
    """The zero-initialised fold head makes an untrained model fuse by pixel average (by design)."""
    model = build_model("test_s4fusion").eval()
    rgb, ir = _gray_pair()
    out = model(rgb, ir)
    expected = 0.5 * (rgb_to_gray(rgb) + ir)
    torch.testing.assert_close(rgb_to_gray(out.fused), expected, atol=2e-3, rtol=0)


class TestS4FusionAdaptiveBlend(ModelTester):
    """Every generic check also with the adaptive-blend fusion base."""

    model_name = "test_s4fusion"
    build_kwargs = dict(fusion_base="adaptive_blend")


def test_untrained_adaptive_blend_is_the_pixel_maximum() -> None:
    """The blend head starts at the pixel maximum (sharpness 1: G·(Y_vi − IR) decides)."""
    torch.manual_seed(0)
    model = build_model("test_s4fusion", fusion_base="adaptive_blend").eval()
    rgb, ir = _gray_pair()
    vi = rgb_to_gray(rgb)
    decided = (vi - ir).abs() > 0.08  # near a tie the blend is a soft mix by design
    torch.testing.assert_close(rgb_to_gray(model(rgb, ir).fused)[decided], torch.maximum(vi, ir)[decided],
                               atol=2e-3, rtol=0)


@pytest.mark.parametrize(("bias", "sharpness", "pick"), [
    (0.0, 10.0, torch.maximum),             # steep in the difference: the pixel maximum
    (0.0, -10.0, torch.minimum),            # the other sign: the pixel minimum
    (30.0, 0.0, lambda vi, ir: vi),         # bias only: the visible luminance
    (-30.0, 0.0, lambda vi, ir: ir),        # negative bias: the thermal image
])
def test_adaptive_blend_selects_a_source(bias: float, sharpness: float, pick) -> None:
    torch.manual_seed(0)
    model = build_model("test_s4fusion", fusion_base="adaptive_blend").eval()
    k2 = model.fusion_head.kernel ** 2
    with torch.no_grad():  # channel 0 of the blend fold is the bias, channel 1 the sharpness
        model.fusion_head.blend.bias[:k2] = bias
        model.fusion_head.blend.bias[k2:] = sharpness
    rgb, ir = _gray_pair()
    vi = rgb_to_gray(rgb)
    expected = pick(vi, ir)
    # Pixels where the two sources nearly tie are a soft mix by design (sigmoid of G·Δ).
    decided = (vi - ir).abs() > 0.02
    torch.testing.assert_close(rgb_to_gray(model(rgb, ir).fused)[decided], expected[decided], atol=2e-3, rtol=0)


def test_scan_backends_agree() -> None:
    torch.manual_seed(1)
    chunked = build_model("test_s4fusion", scan_backend="chunked").eval()
    ref = build_model("test_s4fusion", scan_backend="ref").eval()
    ref.load_state_dict(chunked.state_dict())
    for p in chunked.fusion_head.parameters():  # make the fused output depend on the scans
        p.data.normal_(0, 0.5)
    ref.load_state_dict(chunked.state_dict())
    x = (torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48))
    a, b = chunked(*x), ref(*x)
    torch.testing.assert_close(a.fused, b.fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)


def test_paper_preset_matches_the_published_configuration() -> None:
    model = build_model("s4fusion", preset="paper", num_classes=0)
    assert model._args["dims"] == [48, 96, 192]
    assert model._args["depths"] == [1, 2, 1]
    assert model._args["d_state"] == 12 and model._args["fusion_d_state"] == 18
    assert model._args["ssm_ratio"] == 1.5 and model._args["cmsa_blocks"] == 3
    assert {k: model._args[k] for k in PUBLIC} == PUBLIC
    assert model.input_multiple == 12


def test_paper_preset_parameter_count_matches_the_public_code() -> None:
    """The public model (zipper112/S4Fusion, gray in/out) has 3.563 M parameters (FIDELITY_AUDIT),
    including the finest-scale CMSA whose output it never uses, which we do not build. Adding
    that branch back, the rest differs only by the RGB stem (+1.5 k), the per-modality CMSA input
    norms (+4.0 k) and the fold head (about −8.6 k): within 0.2 %."""
    model = build_model("s4fusion", preset="paper", num_classes=0)
    ours = sum(p.numel() for p in model.parameters())
    dead = CMSA(48, 3, 18, 1.5, 0.0, get_norm_layer("layernorm"), "auto")
    total = ours + sum(p.numel() for p in dead.parameters())
    assert abs(total - 3.563e6) / 3.563e6 < 2e-3, (ours, total)
    assert "0" not in model.fuser and set(model.fuser) == {"1", "2"}


@pytest.mark.parametrize(("size", "overlap", "kernel", "h", "tokens"), [(3, 1, 4, 36, 12), (4, 2, 6, 48, 12)])
def test_patch_embedding_geometry(size: int, overlap: int, kernel: int, h: int, tokens: int) -> None:
    """Public: 4×4 kernel, stride 3 (one pixel of overlap); ours: 6×6, stride 4. Both give
    exactly H/stride tokens on a multiple of the stride, and the fold head mirrors the embedding."""
    model = build_model("test_s4fusion", patch_size=size, patch_overlap=overlap).eval()
    conv = model.embed_ir.proj
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (size, size) and conv.padding == (1, 1)
    assert model.fusion_head.kernel == kernel and model.fusion_head.stride == size
    w = h
    x = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
    assert model.embed_vi(x[0]).shape[1:3] == (tokens, tokens)
    assert model(*x).fused.shape == (1, 3, h, w)


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)


def test_public_wiring_uses_the_stage_inputs_and_the_summed_encoders() -> None:
    """Public wiring, checked against a hand-written forward pass of the public code's order:
    CMSA on the stage inputs (scales 1, 2), decoder from enc_ir + enc_vi of the last stage, each
    decoder stage adds the next coarser CMSA feature before upsampling."""
    torch.manual_seed(0)
    model = build_model("test_s4fusion", **PUBLIC).eval()
    _perturb(model.fusion_head)  # make the output depend on the features
    rgb, ir = torch.rand(1, 3, 36, 48), torch.rand(1, 1, 36, 48)
    x_ir, x_vi = model.embed_ir(ir), model.embed_vi(rgb)
    inputs = []
    for s_ir, s_vi in zip(model.encoder_ir, model.encoder_vi):
        inputs.append((x_ir, x_vi))
        f_ir, d_ir = s_ir(x_ir)
        f_vi, d_vi = s_vi(x_vi)
        x_ir, x_vi = (d_ir, d_vi) if d_ir is not None else (f_ir, f_vi)
    fused = {s: model.fuser[str(s)](*inputs[s]) for s in (1, 2)}
    dec2, dec1, dec0 = model.decoder
    y = dec2.blocks(f_ir + f_vi)
    y = dec1.blocks(dec1.upsample(y + fused[2]))
    y = dec0.blocks(dec0.upsample(y + fused[1]))
    expected = model.decoder_norm(y)
    torch.testing.assert_close(model.forward_features(rgb, ir).decoder[0], expected)


def test_every_parameter_is_trained_in_both_wirings() -> None:
    torch.manual_seed(0)
    for wiring, built in (("public", {"1", "2"}), ("all_scales", {"0", "1", "2"})):
        model = build_model("test_s4fusion", cmsa_wiring=wiring)
        _perturb(model.fusion_head)
        assert set(model.fuser) == built
        out = model(torch.rand(1, 3, 48, 48), torch.rand(1, 1, 48, 48))
        (out.fused.sum() + out.logits.sum()).backward()
        assert_all_params_get_grads(model)  # no dead parameters in either wiring (DDP-safe)


def test_bad_switches_are_refused() -> None:
    with pytest.raises(ValueError, match="cmsa_wiring must be one of public, all_scales"):
        build_model("test_s4fusion", cmsa_wiring="sideways")
    with pytest.raises(ValueError, match="patch_overlap"):
        build_model("test_s4fusion", patch_size=3, patch_overlap=6)
    with pytest.raises(ValueError, match="fusion_base must be one of average, adaptive_blend"):
        build_model("test_s4fusion", fusion_base="median")


def test_sidecars_without_the_switches_load_with_the_old_geometry(tmp_path: Path) -> None:
    """A weight file written before the switches existed (model_args without them) must rebuild
    the architecture it was trained with, whatever its preset, and give the same output."""
    torch.manual_seed(0)
    old = build_model("s4fusion", preset="small", num_classes=3, **LEGACY_ARGS["small"]).eval()
    _perturb(old.fusion_head)
    info = WeightsInfo(variant="s4fusion", preset="small", num_classes=3, model_args={})
    path = save_weights(old.state_dict(), tmp_path / "old.safetensors", info)
    net, _ = build_model_from_weights(path)
    assert net.cmsa_wiring == "all_scales" and net.input_multiple == 16
    assert net.fusion_head.blend is None  # corrects the pixel average, as before fusion_base existed
    x = torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48)
    torch.testing.assert_close(net(*x).fused, old(*x).fused)
    # A sidecar that names the switches gets them, not the legacy values.
    new = build_model("test_s4fusion", num_classes=3, **PUBLIC).eval()
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=3, model_args=dict(PUBLIC))
    net, _ = build_model_from_weights(save_weights(new.state_dict(), tmp_path / "new.safetensors", info))
    assert net.cmsa_wiring == "public" and net.input_multiple == 12


def test_bundled_default_weights_pin_their_switches() -> None:
    """The bundled tiny weights were trained with our stride-4 embedding, all-scales wiring and
    the adaptive-blend fusion head; their sidecar records all three, so they keep loading
    strictly whatever the presets become."""
    net, info = build_model_from_weights(DEFAULT_WEIGHTS)
    assert set(info.model_args) == set(LEGACY_ARGS["tiny"])
    assert info.model_args == dict(LEGACY_ARGS["tiny"], fusion_base="adaptive_blend")
    assert net.cmsa_wiring == "all_scales" and net.embed_ir.proj.kernel_size == (6, 6)
    assert net.fusion_head.blend is not None


def test_presets_shrink() -> None:
    counts = [sum(p.numel() for p in build_model("s4fusion", preset=p).parameters())
              for p in ("paper", "small", "tiny")]
    assert counts[0] > counts[1] > counts[2]


def test_unknown_preset_and_bad_dims() -> None:
    with pytest.raises(ValueError, match="Unknown S4Fusion preset 'huge'; expected one of paper, small, tiny"):
        build_model("s4fusion", preset="huge")
    with pytest.raises(ValueError, match="must double"):
        S4Fusion(dims=(8, 12, 32), depths=(1, 1, 1))


def test_checkpoint_filter_drops_a_mismatched_classifier() -> None:
    src = build_model("test_s4fusion", num_classes=9)
    dst = build_model("test_s4fusion", num_classes=4)
    filtered = checkpoint_filter_fn(src.state_dict(), dst)
    assert not any(k.startswith("seg_head.classifier.") for k in filtered)
    missing, unexpected = dst.load_state_dict(filtered, strict=False)
    assert set(missing) == {"seg_head.classifier.weight", "seg_head.classifier.bias"} and not unexpected


def test_feature_info() -> None:
    model = build_model("test_s4fusion")
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert [f["num_chs"] for f in model.feature_info] == list(PRESET_ARGS["test"]["dims"])
