"""The TeSG network (spec §5.3): eq. 10's α limits, eq. 6 sums, mask wiring, TIVR invariances,
the fallback's equivalence with the "w/o MGCA" wiring, ablation switches, guidance errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from base_tester import ModelTester
from safetensors.torch import save_file

from ivf_perception.guidance import Guidance, GuidanceError
from ivf_perception.models import build_model
from ivf_perception.models.tesg import TeSG
from ivf_perception.models.tesg.attention import TextCrossAttention
from ivf_perception.models.tesg.fusion import attentional_fusion

H, W = 16, 24


class TestTeSG(ModelTester):
    model_name = "test_tesg"
    sizes = ((16, 24), (24, 16))


def _model(**kwargs) -> TeSG:
    torch.manual_seed(0)
    model = build_model("test_tesg", num_classes=3, **kwargs)
    model.set_fallback_text(torch.randn_like(model.fallback_text))
    return model.eval()


def _pair(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, H, W, generator=g), torch.rand(b, 1, H, W, generator=g)


def _guidance(b: int = 2, mask: torch.Tensor | None = None, tokens: int = 7, dim: int = 16, seed: int = 2) -> Guidance:
    g = torch.Generator().manual_seed(seed)
    if mask is None:
        mask = (torch.rand(b, 1, H, W, generator=g) > 0.5).float()
    return Guidance(mask=mask, text_tokens=torch.randn(b, tokens, dim, generator=g))


# ---------------------------------------------------------------- eq. 10


def test_eq10_alpha_limits_pure_function() -> None:
    x_v, x_i, g_v, g_i = (torch.randn(2, 4, 3, 5) for _ in range(4))
    ones, zeros = torch.ones(2, 1, 3, 5), torch.zeros(2, 1, 3, 5)
    torch.testing.assert_close(attentional_fusion(ones, g_v, g_i, x_v, x_i), (1 + g_v) * x_v)
    torch.testing.assert_close(attentional_fusion(zeros, g_v, g_i, x_v, x_i), (1 + g_i) * x_i)
    half = torch.full((2, 1, 3, 5), 0.5)
    torch.testing.assert_close(attentional_fusion(half, g_v, g_i, x_v, x_i),
                               0.5 * (1 + g_v) * x_v + 0.5 * (1 + g_i) * x_i)


@pytest.mark.parametrize("limit", [1.0, 0.0])
def test_eq10_alpha_limits_in_the_network(limit: float) -> None:
    """Forcing Φ_SA's output to ±100 makes α ≡ 1 / 0; F is then the visible / IR term of eq. 10."""
    model = _model()
    with torch.no_grad():
        last = model.tdaf.spatial[2]
        last.weight.zero_()
        last.bias.fill_(100.0 if limit else -100.0)
    rgb, th = _pair()
    with torch.no_grad():
        feats = model.forward_features(rgb, th, _guidance())
        x_v, x_i = feats.f_v + feats.f_vi, feats.f_i + feats.f_iv
        g_v, g_i = torch.sigmoid(model.tdaf.gate_v(x_v)), torch.sigmoid(model.tdaf.gate_i(x_i))
    assert feats.alpha is not None and torch.all(feats.alpha == limit)
    expected = (1 + g_v) * x_v if limit else (1 + g_i) * x_i
    torch.testing.assert_close(feats.fused, expected)


# ---------------------------------------------------------------- encoders and MGCA


def test_three_encoder_passes_are_real_passes_on_masked_images() -> None:
    model = _model()
    rgb, _ = _pair()
    mask = _guidance().mask
    with torch.no_grad():
        whole, masked, inverse = model.encoder_vi.three_passes(rgb, mask)
        torch.testing.assert_close(whole, model.encoder_vi(rgb), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked, model.encoder_vi(mask * rgb), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(inverse, model.encoder_vi((1 - mask) * rgb), rtol=1e-5, atol=1e-5)
        # not feature masking: E(M ⊙ x) differs from M ⊙ E(x)
        assert not torch.allclose(masked, mask * whole, atol=1e-3)


def test_eq6_sums_of_the_four_cross_attentions() -> None:
    model = _model()
    rgb, th = _pair()
    g = _guidance()
    m = g.mask
    with torch.no_grad():
        feats = model.forward_features(rgb, th, g)
        v_m, v_b = model.encoder_vi(m * rgb), model.encoder_vi((1 - m) * rgb)
        i_m, i_b = model.encoder_ir(m * th), model.encoder_ir((1 - m) * th)
        f_vi = model.mgca.ca_vi_m(v_m, i_m) + model.mgca.ca_vi_mbar(v_b, i_b)
        f_iv = model.mgca.ca_iv_m(i_m, v_m) + model.mgca.ca_iv_mbar(i_b, v_b)
    assert feats.guided
    torch.testing.assert_close(feats.f_vi, f_vi, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats.f_iv, f_iv, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats.f_v, model.encoder_vi(rgb), rtol=1e-4, atol=1e-5)


def _captured_inputs(model: TeSG, rgb: torch.Tensor, th: torch.Tensor, g: Guidance) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    hooks = [getattr(model.mgca, n).register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, args))
             for n in ("ca_vi_m", "ca_iv_m", "ca_vi_mbar", "ca_iv_mbar")]
    try:
        with torch.no_grad():
            model(rgb, th, guidance=g)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("fill", [1.0, 0.0])
def test_mask_wiring_background_sees_zero_images_when_m_is_one(fill: float) -> None:
    """M ≡ 1: the 1 − M branch encodes black images; M ≡ 0: the M branch does (and the other
    branch sees the whole images)."""
    model = _model()
    rgb, th = _pair()
    seen = _captured_inputs(model, rgb, th, _guidance(mask=torch.full((2, 1, H, W), fill)))
    with torch.no_grad():
        zero_v, zero_i = model.encoder_vi(torch.zeros_like(rgb)), model.encoder_ir(torch.zeros_like(th))
        whole_v, whole_i = model.encoder_vi(rgb), model.encoder_ir(th)
    empty, full = ("ca_vi_mbar", "ca_vi_m") if fill else ("ca_vi_m", "ca_vi_mbar")
    torch.testing.assert_close(seen[empty][0], zero_v, rtol=1e-4, atol=1e-5)   # queries: visible
    torch.testing.assert_close(seen[empty][1], zero_i, rtol=1e-4, atol=1e-5)   # keys/values: IR
    torch.testing.assert_close(seen[full][0], whole_v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[full][1], whole_i, rtol=1e-4, atol=1e-5)
    iv = "ca_iv_mbar" if fill else "ca_iv_m"
    torch.testing.assert_close(seen[iv][0], zero_i, rtol=1e-4, atol=1e-5)      # IR reconstructs visible


def test_background_blocks_get_gradients_with_guidance() -> None:
    model = _model().train()
    out = model(*_pair(), guidance=_guidance())
    (out.fused.square().mean() + out.logits.square().mean()).backward()
    for name in ("ca_vi_mbar", "ca_iv_mbar", "ca_vi_m", "ca_iv_m"):
        grads = [p.grad for p in getattr(model.mgca, name).parameters()]
        assert all(gr is not None and gr.abs().sum() > 0 for gr in grads), name
    assert "fused_raw" in out.aux


# ---------------------------------------------------------------- TIVR


def _tivr() -> TextCrossAttention:
    torch.manual_seed(3)
    return TextCrossAttention(16, 12, 4).eval()


def test_tivr_ignores_token_order_and_reads_the_tokens() -> None:
    tivr = _tivr()
    x, tokens = torch.randn(2, 16, 5, 6), torch.randn(2, 9, 12)
    with torch.no_grad():
        out = tivr(x, tokens)
        permuted = tivr(x, tokens[:, torch.randperm(9)])
        changed = tivr(x, tokens + torch.randn_like(tokens))
    torch.testing.assert_close(permuted, out, rtol=1e-5, atol=1e-5)
    assert (changed - out).abs().max() > 1e-3


def test_tivr_attention_sums_to_one_and_matches_the_reference() -> None:
    tivr = _tivr()
    x, tokens = torch.randn(2, 16, 5, 6), torch.randn(2, 9, 12)
    with torch.no_grad():
        weights = tivr.attention_weights(x, tokens)
        assert weights.shape == (2, 4, 30, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 30))
        q, k, v = tivr._qkv(x, tokens)
        torch.testing.assert_close(weights @ v, torch.nn.functional.scaled_dot_product_attention(q, k, v))
        ref = (weights @ v).transpose(-2, -1).reshape(2, 16, 5, 6)
        torch.testing.assert_close(tivr(x, tokens), x + tivr.project_out(ref), rtol=1e-5, atol=1e-5)


def test_network_output_follows_the_text_tokens() -> None:
    model = _model()
    rgb, th = _pair()
    g = _guidance()
    with torch.no_grad():
        a = model(rgb, th, guidance=g).fused
        b = model(rgb, th, guidance=Guidance(g.mask, g.text_tokens.flip(1))).fused
        c = model(rgb, th, guidance=Guidance(g.mask, torch.randn_like(g.text_tokens))).fused
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-6


# ---------------------------------------------------------------- fallback and ablations


def test_fallback_equals_explicit_fallback_wiring_and_buffers() -> None:
    """guidance=None == the w/o-MGCA wiring with the stored tokens, computed by hand."""
    model = _model()
    rgb, th = _pair()
    with torch.no_grad():
        out = model(rgb, th)
        f_v, f_i = model.encoder_vi(rgb), model.encoder_ir(th)
        f_vi, f_iv = model.mgca.ca_vi_m(f_v, f_i), model.mgca.ca_iv_m(f_i, f_v)
        fused, _ = model.tdaf(f_v, f_i, f_vi, f_iv, model.fallback_text.expand(2, -1, -1))
        expected = model.output(model.decoder(fused)).clamp(0, 1)
    assert not model.forward_features(rgb, th).guided
    torch.testing.assert_close(out.fused, expected)


def test_fallback_equals_the_wo_mgca_network_given_the_stored_tokens() -> None:
    full = _model()
    ablation = build_model("test_tesg", num_classes=3, mgca=False).eval()
    missing, unexpected = ablation.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(".ca_vi_mbar." in k or ".ca_iv_mbar." in k for k in unexpected)
    rgb, th = _pair()
    any_mask = Guidance(mask=_guidance().mask, text_tokens=full.fallback_text.expand(2, -1, -1).clone())
    with torch.no_grad():
        torch.testing.assert_close(ablation(rgb, th, guidance=any_mask).fused, full(rgb, th).fused)
        torch.testing.assert_close(ablation(rgb, th, guidance=any_mask).logits, full(rgb, th).logits)


def test_wo_tivr_ignores_the_text_and_wo_gaf_decodes_the_sum() -> None:
    rgb, th = _pair()
    g = _guidance()
    no_tivr = _model(tivr=False)
    with torch.no_grad():
        a = no_tivr(rgb, th, guidance=g).fused
        b = no_tivr(rgb, th, guidance=Guidance(g.mask, torch.randn_like(g.text_tokens))).fused
    torch.testing.assert_close(a, b)
    assert no_tivr.tdaf.tivr is None
    no_gaf = _model(gaf=False)
    with torch.no_grad():
        feats = no_gaf.forward_features(rgb, th, g)
    assert feats.alpha is None and no_gaf.tdaf.gate_v is None
    torch.testing.assert_close(feats.fused, feats.f_vi + feats.f_iv)


def test_fusion_only_needs_no_multiple() -> None:
    model = build_model("test_tesg", num_classes=0).eval()
    assert model.input_multiple == 1 and model.seg_head is None
    with torch.no_grad():
        out = model(torch.rand(1, 3, 5, 7), torch.rand(1, 1, 5, 7),
                    guidance=Guidance(torch.ones(1, 1, 5, 7), torch.randn(1, 3, 16)))
    assert out.fused.shape == (1, 3, 5, 7) and out.logits is None


# ---------------------------------------------------------------- bad guidance


@pytest.mark.parametrize(("guidance", "message"), [
    (Guidance(torch.zeros(2, 1, H, W + 8), torch.zeros(2, 7, 16)), r"mask is 16x32 but the images are 16x24"),
    (Guidance(torch.zeros(1, 1, H, W), torch.zeros(1, 7, 16)), "batch of 1, the images are a batch of 2"),
    (Guidance(torch.zeros(2, 1, H, W), torch.zeros(2, 7, 32)), "32-d but the network reads 16-d"),
    ({"mask": torch.zeros(2, 1, H, W), "text": torch.zeros(2, 7, 16)}, "expected an ivf_perception.guidance.Guidance"),
])
def test_wrong_guidance_is_refused_with_the_reason(guidance: object, message: str) -> None:
    with pytest.raises(GuidanceError, match=message):
        _model()(*_pair(), guidance=guidance)  # type: ignore[arg-type]


def test_wrong_dtype_guidance_cannot_be_built() -> None:
    with pytest.raises(GuidanceError, match="floating dtype"):
        Guidance(torch.zeros(2, 1, H, W, dtype=torch.bool), torch.zeros(2, 7, 16))


def test_fallback_text_from_file_and_its_errors(tmp_path: Path) -> None:
    model = build_model("test_tesg", num_classes=0)
    assert not model.has_fallback_text()
    tokens = torch.randn(6, 16)
    save_file({"text_tokens": tokens}, str(tmp_path / "t.safetensors"))
    model.set_fallback_text(tmp_path / "t.safetensors")
    assert model.has_fallback_text() and torch.equal(model.fallback_text, tokens)
    built = build_model("test_tesg", num_classes=0, fallback_text=tokens[None])
    assert torch.equal(built.fallback_text, tokens)
    with pytest.raises(GuidanceError, match=r"expected \(6, 16\)"):
        model.set_fallback_text(torch.zeros(5, 16))
    with pytest.raises(GuidanceError, match="finite"):
        model.set_fallback_text(torch.full((6, 16), float("nan")))
    save_file({"other": tokens}, str(tmp_path / "o.safetensors"))
    with pytest.raises(GuidanceError, match="no 'fallback_text' or 'text_tokens'"):
        model.set_fallback_text(tmp_path / "o.safetensors")
    with pytest.raises(GuidanceError, match="not found"):
        model.set_fallback_text(tmp_path / "missing.safetensors")


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="do not split into 3 text_heads"):
        build_model("test_tesg", text_heads=3)
    with pytest.raises(ValueError, match="Unknown TeSG preset 'huge'"):
        build_model("tesg", preset="huge")


def test_paper_parameter_count() -> None:
    """Fusion network of the reconstruction: the spec's sketch measured 0.77 M (§2.7)."""
    model = build_model("tesg", preset="paper", num_classes=0, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 767_809


def test_paper_cost_with_and_without_guidance() -> None:
    """Fusion network at 480×640: the spec's sketch measured ≈ 377 GMAC guided (§2.7); the
    fallback runs each encoder once and two of the four cross-attentions, about half."""
    from ivf_perception.engine.profiling import count_gmacs

    model = build_model("tesg", preset="paper", num_classes=0, device="meta")
    guided = count_gmacs(model, 480, 640, device="meta", guided=True)
    assert guided == pytest.approx(377.27, abs=0.01)
    assert count_gmacs(model, 480, 640, device="meta") == pytest.approx(178.83, abs=0.01)
