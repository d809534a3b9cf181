"""Restormer's transformer block (Zamir et al., CVPR 2022) and its resizing layers.

UP-Fusion and TeSG build their U-Nets from this block, so it lives here once. Restormer
attends across *channels*, not pixels (MDTA: a C/h × C/h attention map per head), which keeps
the cost linear in H·W and lets full-resolution stages run on large images.

* :class:`ChannelLayerNorm`: per-pixel LayerNorm over the channels of a B×C×H×W map, with the
  population variance and eps 1e-5 as Restormer writes it (``WithBias``; ``BiasFree`` scales
  without centring).
* :class:`MDTA`: ``qkv = DW3×3(1×1(x))``; per head, q and k are L2-normalised along H·W;
  ``A = softmax(q kᵀ · τ_h)``; ``out = 1×1(A v)``.
* :class:`ChannelCrossAttentionBase`: the same projections with queries from one map and keys
  and values from another (TeSG's cross-modal attention, UP-Fusion's top-m attention), with
  :func:`channel_attention_logits` (``q kᵀ · τ`` of the normalised q and k) shared by all three.
* :class:`GDFN`: ``1×1 → DW3×3 → split (x1, x2) → GELU(x1)·x2 → 1×1`` with hidden width
  ``int(C · expansion)``.
* :class:`TransformerBlock`: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``.
* :class:`Downsample` / :class:`Upsample`: 3×3 conv (C→C/2, C→2C) + pixel (un)shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs

__all__ = ["ChannelLayerNorm", "MDTA", "ChannelCrossAttentionBase", "GDFN", "TransformerBlock", "Downsample",
           "Upsample", "split_heads", "merge_heads", "channel_attention_logits", "LAYER_NORM_TYPES"]

LAYER_NORM_TYPES = ("WithBias", "BiasFree")


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``B (h c) H W -> B h c (H W)``: the per-head channel-by-pixel matrices of MDTA."""
    b, ch, hh, ww = x.shape
    return x.reshape(b, heads, ch // heads, hh * ww)


def merge_heads(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`split_heads`."""
    b, heads, c, _ = x.shape
    return x.reshape(b, heads * c, height, width)


def channel_attention_logits(q: torch.Tensor, k: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Transposed attention's logits: ``q kᵀ · τ`` with q and k L2-normalised along H·W.

    Callers choose the precision by what they pass (UP-Fusion passes fp32 copies, so its top-m
    selection does not depend on the autocast dtype).

    Shape:
        q, k: (B, heads, c, H·W), temperature: (heads, 1, 1)  ->  (B, heads, c, c)
    """
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return q @ k.transpose(-2, -1) * temperature


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of a B×C×H×W map (Restormer's ``LayerNorm``).

    Written out rather than ``nn.LayerNorm`` on a permuted copy so the two variants share one
    formula: ``(x − μ)/sqrt(σ² + eps)·w + b`` (WithBias) or ``x/sqrt(σ² + eps)·w`` (BiasFree:
    x is not centred, but σ² is still the centred variance, as Restormer computes it).
    """

    def __init__(self, dim: int, norm_type: str = "WithBias", eps: float = 1e-5,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"Unknown Restormer LayerNorm type {norm_type!r}; expected one of {LAYER_NORM_TYPES}")
        dd = factory_kwargs(device, dtype)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **dd))
        self.bias = nn.Parameter(torch.zeros(dim, **dd)) if norm_type == "WithBias" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        w = self.weight.view(1, -1, 1, 1)
        if self.bias is None:
            return x / torch.sqrt(var + self.eps) * w
        mu = x.mean(dim=1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * w + self.bias.view(1, -1, 1, 1)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention between channels, per head.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MDTA: {dim} channels do not split into {num_heads} heads")
        dd = factory_kwargs(device, dtype)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1, **dd))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias, **dd)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias, **dd)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        attn = channel_attention_logits(q, k, self.temperature).softmax(dim=-1)
        return self.project_out(merge_heads(attn @ v, h, w))


class ChannelCrossAttentionBase(nn.Module):
    """MDTA's projections for two inputs: ``q = DW3×3(1×1(x_q))``, ``[k, v] = DW3×3(1×1(x_kv))``,
    a learned per-head temperature τ and the 1×1 ``project_out``.

    A base class rather than a child module so that subclasses own the parameters under the
    names their checkpoints use (``temperature``, ``q``, ``q_dwconv``, ``kv``, ``kv_dwconv``,
    ``project_out``; converted UP-Fusion weights and saved TeSG weights load unchanged) and only
    write what happens between :meth:`heads` and :meth:`merge` in their ``forward``.

    Args:
        dim: channels C of both inputs (divisible by ``num_heads``).
        num_heads: attention heads.
        bias: bias of the five convolutions.
        device, dtype: where to create parameters.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{type(self).__name__}: {dim} channels do not split into {num_heads} heads")
        dd = factory_kwargs(device, dtype)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1, **dd))
        self.q = nn.Conv2d(dim, dim, 1, bias=bias, **dd)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias, **dd)
        self.kv = nn.Conv2d(dim, 2 * dim, 1, bias=bias, **dd)
        self.kv_dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=bias, **dd)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias, **dd)

    def heads(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q (from ``x_q``), k and v (from ``x_kv``), not yet normalised.

        Shape:
            x_q, x_kv: (B, C, H, W)  ->  q, k, v: (B, heads, C/heads, H·W)
        """
        q = split_heads(self.q_dwconv(self.q(x_q)), self.num_heads)
        k, v = (split_heads(t, self.num_heads) for t in self.kv_dwconv(self.kv(x_kv)).chunk(2, dim=1))
        return q, k, v

    def merge(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Heads back to a map, then ``project_out``.

        Shape:
            out: (B, heads, C/heads, H·W)  ->  (B, C, H, W)
        """
        return self.project_out(merge_heads(out, height, width))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, expansion: float, bias: bool = False,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias, **dd)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias, **dd)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Restormer block: ``x + MDTA(LN1(x))``, then ``x + GDFN(LN2(x))``.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float = 2.66, bias: bool = False,
                 norm_type: str = "WithBias", device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.norm1 = ChannelLayerNorm(dim, norm_type, **dd)
        self.attn = MDTA(dim, num_heads, bias, **dd)
        self.norm2 = ChannelLayerNorm(dim, norm_type, **dd)
        self.ffn = GDFN(dim, ffn_expansion, bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Downsample(nn.Sequential):
    """Halve the resolution, double the channels: 3×3 conv C→C/2 (no bias), pixel unshuffle 2.

    Shape:
        x: (B, C, H, W)  ->  (B, 2C, H/2, W/2)
    """

    def __init__(self, dim: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False, **factory_kwargs(device, dtype)),
                         nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """Double the resolution, halve the channels: 3×3 conv C→2C (no bias), pixel shuffle 2.

    Shape:
        x: (B, C, H, W)  ->  (B, C/2, 2H, 2W)
    """

    def __init__(self, dim: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(nn.Conv2d(dim, 2 * dim, 3, padding=1, bias=False, **factory_kwargs(device, dtype)),
                         nn.PixelShuffle(2))
