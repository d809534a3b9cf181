"""Restormer TransformerBlock (MDTA + GDFN + channel LayerNorm) against its equations written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models.layers.restormer import (
    GDFN,
    MDTA,
    ChannelLayerNorm,
    Downsample,
    TransformerBlock,
    Upsample,
)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))


def test_with_bias_layer_norm_is_torch_layer_norm_over_channels() -> None:
    norm = ChannelLayerNorm(6)
    _randomise(norm)
    x = torch.randn(2, 6, 3, 5)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref)


def test_bias_free_layer_norm_scales_without_centring() -> None:
    norm = ChannelLayerNorm(4, "BiasFree")
    assert norm.bias is None
    x = torch.randn(1, 4, 2, 2) + 3.0
    var = ((x - x.mean(1, keepdim=True)) ** 2).mean(1, keepdim=True)
    torch.testing.assert_close(norm(x), x / torch.sqrt(var + 1e-5) * norm.weight.view(1, -1, 1, 1))


def test_unknown_layer_norm_type_is_refused() -> None:
    with pytest.raises(ValueError, match="BiasFree"):
        ChannelLayerNorm(4, "batch")


def _mdta_reference(m: MDTA, x: torch.Tensor) -> torch.Tensor:
    """MDTA head by head, pixel sums written as explicit matrix products."""
    b, c, h, w = x.shape
    qkv = m.qkv_dwconv(m.qkv(x))
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    ch = c // m.num_heads
    outs = []
    for head in range(m.num_heads):
        sl = slice(head * ch, (head + 1) * ch)
        qh, kh, vh = (t[:, sl].reshape(b, ch, h * w) for t in (q, k, v))
        qh = qh / qh.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kh = kh / kh.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        logits = torch.einsum("bip,bjp->bij", qh, kh) * m.temperature[head, 0, 0]
        a = torch.exp(logits - logits.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        outs.append(torch.einsum("bij,bjp->bip", a, vh).reshape(b, ch, h, w))
    return m.project_out(torch.cat(outs, dim=1))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_mdta_matches_its_equation(heads: int) -> None:
    torch.manual_seed(0)
    m = MDTA(8, heads)
    with torch.no_grad():
        m.temperature.copy_(torch.rand(heads, 1, 1) + 0.5)
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(m(x), _mdta_reference(m, x), rtol=1e-5, atol=1e-6)


def test_mdta_refuses_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="heads"):
        MDTA(6, 4)


def test_gdfn_matches_its_equation_and_hidden_width() -> None:
    torch.manual_seed(1)
    m = GDFN(48, 2.66)
    assert m.project_out.in_channels == 127  # int(48 * 2.66), as in the paper configuration
    x = torch.randn(1, 48, 4, 4)
    y = m.dwconv(m.project_in(x))
    ref = m.project_out(0.5 * y[:, :127] * (1 + torch.erf(y[:, :127] / 2 ** 0.5)) * y[:, 127:])
    torch.testing.assert_close(m(x), ref)


def test_transformer_block_is_two_pre_norm_residuals() -> None:
    torch.manual_seed(2)
    block = TransformerBlock(8, 2, 2.0)
    _randomise(block, 3)
    x = torch.randn(1, 8, 4, 4)
    mid = x + _mdta_reference(block.attn, block.norm1(x))
    ref = mid + block.ffn(block.norm2(mid))
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)
    assert block.attn.qkv.bias is None and block.ffn.project_in.bias is None  # Restormer's bias=False


def test_resizing_shapes() -> None:
    x = torch.randn(1, 8, 6, 4)
    assert Downsample(8)(x).shape == (1, 16, 3, 2)
    assert Upsample(8)(x).shape == (1, 4, 12, 8)
