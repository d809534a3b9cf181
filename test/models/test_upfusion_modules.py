"""UP-Fusion's modules against explicit references (spec §5.3): SCPM, GAM, TCPM, top-m attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models.upfusion.gam import GAM
from ivf_perception.models.upfusion.scpm import SCPM
from ivf_perception.models.upfusion.semantic import build_semantic_backbone
from ivf_perception.models.upfusion.tcpm import TCPM, TopMCrossAttention


class RecordingTower(torch.nn.Module):
    """Stands in for the ConvNeXt only to record what SCPM feeds it; returns a fixed feature."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return self.out.expand(x.shape[0], -1, 7, 7)


def _scpm(channels: int = 48) -> tuple[SCPM, RecordingTower]:
    torch.manual_seed(0)
    tower = RecordingTower(torch.randn(1, 16, 1, 1))
    return SCPM(channels, tower, 16, alpha_init=0.7), tower


def test_scpm_keeps_33_of_48_channels_by_eq1_and_mixes_them_in_score_order() -> None:
    scpm, tower = _scpm()
    assert scpm.keep == 33
    x = torch.randn(2, 48, 6, 10)
    # ω_F = σ(MLP(GAP)) + α σ(Linear(pooled tower feature)), written out
    g = x.mean(dim=(2, 3))
    w1, b1, w2, b2 = scpm.fc[0].weight, scpm.fc[0].bias, scpm.fc[2].weight, scpm.fc[2].bias
    omega_c = torch.sigmoid(torch.relu(g @ w1.T + b1) @ w2.T + b2)
    s = tower.out.flatten().expand(2, -1)
    omega_f = omega_c + 0.7 * torch.sigmoid(s @ scpm.semantic_fc.weight.T + scpm.semantic_fc.bias)
    torch.testing.assert_close(scpm.scores(x), omega_f)
    out = scpm(x)
    w = scpm.expand_conv.weight[:, :, 0, 0]  # (48, 33)
    for b in range(2):
        order = sorted(range(48), key=lambda c: -float(omega_f[b, c].detach()))[:33]
        ref = sum(w[:, j, None, None] * x[b, c] for j, c in enumerate(order))
        torch.testing.assert_close(out[b], ref, rtol=1e-5, atol=1e-5)


def test_scpm_feeds_the_tower_the_bilinear_224_resize_of_the_3_channel_projection() -> None:
    scpm, tower = _scpm()
    x = torch.randn(1, 48, 16, 24)
    scpm(x)
    expected = F.interpolate(F.conv2d(x, scpm.to_rgb.weight), size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(tower.seen[-1], expected)


def test_scpm_tower_runs_without_gradient_and_can_be_kept_in_eval_mode() -> None:
    tower, dim = build_semantic_backbone("test")
    assert dim == 16 and not any(p.requires_grad for p in tower.parameters())
    scpm = SCPM(16, tower, dim, reduction=4, backbone_eval_mode=True).train()
    assert scpm.training and not scpm.backbone.training
    faithful = SCPM(16, build_semantic_backbone("test")[0], dim, reduction=4).train()
    assert faithful.backbone.training  # the release trains with stochastic depth active


def test_gam_is_eq3_with_chosen_gamma_and_beta() -> None:
    gam = GAM(4)
    gamma = torch.tensor([0.5, -1.0, 2.0, 0.0])
    beta = torch.tensor([0.1, 0.2, -0.3, 1.0])
    with torch.no_grad():  # hidden layer off: [γ, β] is the second conv's bias
        for p in gam.affine[0].parameters():
            p.zero_()
        gam.affine[2].weight.zero_()
        gam.affine[2].bias.copy_(torch.cat([gamma, beta]))
    fused, source = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = fused * (1 + gamma.view(1, 4, 1, 1)) + beta.view(1, 4, 1, 1)
    torch.testing.assert_close(gam(fused, source), expected)


def test_gam_predicts_the_affine_from_the_sources_global_average() -> None:
    torch.manual_seed(1)
    gam = GAM(4)
    fused, source = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    g = source.mean(dim=(2, 3))[0]
    h = torch.relu(gam.affine[0].weight[:, :, 0, 0] @ g + gam.affine[0].bias)
    gb = gam.affine[2].weight[:, :, 0, 0] @ h + gam.affine[2].bias
    expected = fused * (1 + gb[:4].view(1, 4, 1, 1)) + gb[4:].view(1, 4, 1, 1)
    torch.testing.assert_close(gam(fused, source), expected)


def _topm_reference(m: TopMCrossAttention, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
    """Per batch element and head, the mask built by sorting each row."""
    b, c, h, w = x_q.shape
    q = m.q_dwconv(m.q(x_q))
    kv = m.kv_dwconv(m.kv(x_kv))
    k, v = kv[:, :c], kv[:, c:]
    ch = c // m.num_heads
    out = torch.zeros_like(q)
    for bi in range(b):
        for head in range(m.num_heads):
            sl = slice(head * ch, (head + 1) * ch)
            qh, kh, vh = (t[bi, sl].reshape(ch, h * w) for t in (q, k, v))
            qh = qh / qh.norm(dim=1, keepdim=True)
            kh = kh / kh.norm(dim=1, keepdim=True)
            a = qh @ kh.T * m.temperature[head, 0, 0]
            keep = int(ch * 0.9)
            masked = torch.full_like(a, float("-inf"))
            for r in range(ch):
                cols = torch.argsort(a[r], descending=True)[:keep]
                masked[r, cols] = a[r, cols]
            out[bi, sl] = (torch.softmax(masked, dim=1) @ vh).reshape(ch, h, w) * m.scale
    return m.project_out(out)


@pytest.mark.parametrize("dim, heads", [(20, 2), (16, 1)])
def test_topm_attention_matches_a_row_by_row_reference(dim: int, heads: int) -> None:
    torch.manual_seed(2)
    m = TopMCrossAttention(dim, heads)
    with torch.no_grad():
        m.temperature.copy_(torch.rand(heads, 1, 1) * 3 + 0.5)
    x_q, x_kv = torch.randn(2, dim, 4, 5), torch.randn(2, dim, 4, 5)
    torch.testing.assert_close(m(x_q, x_kv), _topm_reference(m, x_q, x_kv), rtol=1e-6, atol=1e-6)


def test_topm_mask_keeps_exactly_floor_09c_per_row_and_scale_scales_the_output() -> None:
    torch.manual_seed(3)
    m = TopMCrossAttention(20, 2)
    mask = m.topm_mask(torch.randn(3, 2, 10, 10))
    assert (mask.sum(-1) == 9).all()
    x_q, x_kv = torch.randn(1, 20, 3, 3), torch.randn(1, 20, 3, 3)
    base = m(x_q, x_kv)
    with torch.no_grad():
        m.scale.mul_(3.0)
    torch.testing.assert_close(m(x_q, x_kv), 3 * base)  # project_out has no bias
    with pytest.raises(ValueError, match="keep no entry"):
        TopMCrossAttention(4, 4)


def _tcpm_reference(m: TCPM, f_a: torch.Tensor, f_b: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """TCPM written out: SE scores, argsort selection, explicit 1×1 mixes, π = argsort(-u)."""
    x = torch.cat([f_a, f_b], dim=1)
    b, c2 = x.shape[:2]
    g = x.mean(dim=(2, 3))
    w = torch.sigmoid(torch.relu(g @ m.se_fc[0].weight.T) @ m.se_fc[2].weight.T)
    u = torch.relu(text @ m.text_fc[0].weight.T + m.text_fc[0].bias) @ m.text_fc[2].weight.T + m.text_fc[2].bias
    perm = torch.argsort(-u)
    conv_out = m.conv_out.weight[:, :, 0, 0]
    expand = m.expand_conv.weight[:, :, 0, 0]
    outs = []
    for bi in range(b):
        idx = torch.argsort(-w[bi])[:c2 // 2]
        y = torch.einsum("oi,ihw->ohw", expand, x[bi, idx]) + m.expand_conv.bias[:, None, None]
        q_in = torch.einsum("oi,ihw->ohw", conv_out, y[perm]) + m.conv_out.bias[:, None, None]
        kv_in = torch.einsum("oi,ihw->ohw", conv_out, x[bi]) + m.conv_out.bias[:, None, None]
        a = _topm_reference(m.attn, m.norm1(q_in[None]), m.norm2(kv_in[None]))
        outs.append(a + m.ffn(m.norm3(a)))
    return torch.cat(outs)


def test_tcpm_matches_a_straightforward_reference() -> None:
    torch.manual_seed(4)
    m = TCPM(12, 2, ffn_expansion=2.0)
    text = torch.randn(512)
    m.set_text(text)
    f_a, f_b = torch.randn(2, 12, 4, 6), torch.randn(2, 12, 4, 6)
    torch.testing.assert_close(m(f_a, f_b), _tcpm_reference(m, f_a, f_b, text), rtol=1e-5, atol=1e-6)


def test_tcpm_permutation_is_argsort_of_the_text_scores() -> None:
    torch.manual_seed(5)
    m = TCPM(24, 2)
    text = torch.randn(512)
    m.set_text(text)
    pi = m.text_permutation
    assert pi.dtype == torch.int64 and sorted(pi.tolist()) == list(range(48))
    torch.testing.assert_close(pi, torch.argsort(-m.text_scores(text)))
    assert m.keep == 24 and m.conv_out.in_channels == 48  # one conv_out serves Q_in and KV_in


def test_scores_stay_fp32_under_autocast() -> None:
    torch.manual_seed(6)
    tcpm = TCPM(8, 1, ffn_expansion=2.0)
    scpm = SCPM(16, build_semantic_backbone("test")[0], 16, reduction=4)
    x = torch.randn(1, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tcpm.se_scores(x).dtype == torch.float32
        assert tcpm.text_scores(torch.randn(512)).dtype == torch.float32
        assert scpm.scores(x).dtype == torch.float32
        q = torch.randn(1, 8, 4, 4)
        assert tcpm.attn.q(q).dtype == torch.bfloat16  # autocast is on outside the scores
        tcpm(q, q)
