"""MAFS segmentation decoder: FPN pixel decoder + ASPP, inverted-pyramid transformer decoder, multilabel head.

Data flow, for the fused deep levels D1…D4 (H/4 … H/32, C_d channels) and the half-resolution
PHF feature P (H/2, C_s channels):

1. FPN pixel decoder (MaskFormer's "BasePixelDecoder"): top-down from D4, lateral 1×1 and
   output 3×3 units, giving multi-scale maps M1…M4 that carry D4's semantics down to H/4.
2. ASPP (shared by all scales, as in the public code) adds multi-rate context to M1…M3.
3. Inverted-pyramid transformer decoder, three stages from coarse to fine (InvPT's layout):
   stage 1 at H/16 starts from ``D3 + ASPP(M3)``; stages 2 and 3 upsample (×2 to the next
   level's size), embed by two 3×3 units, add ``ASPP(M2)``/``ASPP(M1)`` and refine. Each stage
   is a transformer block with transposed (channel) attention, linear in H·W, which is what
   makes attention affordable at H/4. The normalised stage outputs are resized to H/2 and summed.
4. Two 3×3 units, concatenation with P, a multi-dilation aggregation, then the multilabel head:
   a binary (foreground) logit weights the features before the semantic classifier; a boundary
   logit is predicted from the semantic and plain features (training only).

Auxiliary outputs (training only), named as the MAFS losses read them: ``binary_logits`` and
``boundary_logits`` (B×1×H×W) and ``aux_logits`` (one B×K×H×W map per transformer stage, deep
supervision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.mafs.blocks import ConvBNAct

__all__ = [
    "ASPP",
    "ASPP_FORMS",
    "ResidualASPP",
    "DilatedAggregation",
    "FPNPixelDecoder",
    "InvertedPyramidDecoder",
    "LeFF",
    "MultiLabelSegHead",
    "SegDecoderOutput",
    "SegmentationDecoder",
    "TransformerBlock",
    "TransposedAttention",
]


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


# --------------------------------------------------------------------------- pixel decoder


class FPNPixelDecoder(nn.Module):
    """Top-down feature pyramid: ``M_i = conv3×3(lateral1×1(D_i) + up(M_{i+1}))``, ``M_4 = conv3×3(D_4)``.

    Nearest-neighbour upsampling as in FPN; sizes follow the finer map, so any input size works.

    Args:
        in_chs: channels of D1…D4 (finest first).
        dim: output channels.
        device, dtype: where to create parameters.

    Shape:
        feats: [(B, in_chs[i], H_i, W_i)], finest first  ->  [(B, dim, H_i, W_i)], finest first
    """

    def __init__(self, in_chs: list[int], dim: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.lateral = nn.ModuleList(ConvBNAct(c, dim, 1, act_layer=None, **dd) for c in in_chs[:-1])
        self.output = nn.ModuleList(
            [*(ConvBNAct(dim, dim, 3, **dd) for _ in in_chs[:-1]), ConvBNAct(in_chs[-1], dim, 3, **dd)]
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        y = self.output[-1](feats[-1])
        outs = [y]
        for i in reversed(range(len(feats) - 1)):
            lateral = self.lateral[i](feats[i])
            y = self.output[i](lateral + _resize(y, lateral.shape[-2:], mode="nearest"))
            outs.append(y)
        return outs[::-1]


ASPP_FORMS = ("public", "deeplab")
"""The ASPP of the public code (:class:`ResidualASPP`) or DeepLab v3's (:class:`ASPP`)."""


class ResidualASPP(nn.Module):
    """The public code's ASPP: 1×1 and dilated 3×3 convolutions (rates 1–4), concatenated,
    squeezed by a 1×1 convolution, added to the input, then a 3×3 conv unit.

    Why small rates: the decoder's maps are 8–64 px on the paper's 256 px crops (H/32 … H/4);
    a 3×3 kernel dilated by 18 on an 8 px map reads only padding outside its centre tap, so
    DeepLab's 6/12/18 (tuned for 33–65 px maps at output stride 16/8) degenerates there. The
    residual keeps the level's own feature.

    Args:
        dim: input and output channels.
        rates: dilation rates of the 3×3 branches (public: 1, 2, 3, 4).
        device, dtype: where to create parameters.

    Shape:
        x: (B, dim, H, W)  ->  (B, dim, H, W)
    """

    def __init__(self, dim: int, rates: tuple[int, ...] = (1, 2, 3, 4), device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            [nn.Conv2d(dim, dim, 1, **dd), *(nn.Conv2d(dim, dim, 3, padding=r, dilation=r, **dd) for r in rates)]
        )
        self.squeeze = nn.Conv2d(dim * (len(rates) + 1), dim, 1, **dd)
        self.refine = ConvBNAct(dim, dim, 3, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.squeeze(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.refine(mixed + x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3): 1×1, dilated 3×3 at each rate, image pooling.

    Args:
        dim: input and output channels.
        rates: dilation rates of the 3×3 branches.
        device, dtype: where to create parameters.

    Shape:
        x: (B, dim, H, W)  ->  (B, dim, H, W)
    """

    def __init__(self, dim: int, rates: tuple[int, ...] = (6, 12, 18), device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.branches = nn.ModuleList(
            [ConvBNAct(dim, dim, 1, **dd), *(ConvBNAct(dim, dim, 3, dilation=r, **dd) for r in rates)]
        )
        # No BatchNorm on the pooled 1×1 map: it fails in training at batch size 1.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1, **dd), nn.ReLU())
        self.project = ConvBNAct(dim * (len(rates) + 2), dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


# --------------------------------------------------------------------------- transformer decoder


class TransposedAttention(nn.Module):
    """Multi-head transposed attention (Restormer's MDTA): attention across channels, not pixels.

    q, k, v come from a 1×1 then depth-wise 3×3 convolution (local context); q and k are
    L2-normalised over the pixels and the C/heads × C/heads attention map is scaled by a
    learned per-head temperature. Cost is linear in H·W.

    Args:
        dim: channels C (divisible by ``num_heads``).
        num_heads: attention heads.
        device, dtype: where to create parameters.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        dd = factory_kwargs(device, dtype)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1, **dd))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False, **dd)
        self.qkv_local = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=False, **dd)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w)
                   for t in self.qkv_local(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: 1×1 → GELU → depth-wise 3×3 → GELU → 1×1.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, hidden: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, **dd), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd), nn.GELU(),
            nn.Conv2d(hidden, dim, 1, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on maps: ``x + attn(LN(x))`` then ``x + LeFF(LN(x))``.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.norm1 = LayerNorm2d(dim, **dd)
        self.attn = TransposedAttention(dim, num_heads, **dd)
        self.norm2 = LayerNorm2d(dim, **dd)
        self.ffn = LeFF(dim, max(1, int(round(dim * ffn_ratio))), **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class InvertedPyramidDecoder(nn.Module):
    """Multi-stage transformer decoder over an inverted pyramid (coarse → fine), InvPT's layout.

    Stage 0 refines the coarsest input; every later stage upsamples the previous output to the
    size of its skip, embeds it (two 3×3 units), adds the skip and refines it with a transformer
    block. The normalised outputs of all stages, resized to ``out_size``, are summed and
    projected, so the result aggregates every scale.

    Args:
        dim: channels C.
        num_stages: stages (3 in the paper); ``skips`` must hold ``num_stages - 1`` maps.
        num_heads: attention heads.
        ffn_ratio: hidden width of the feed-forward, as a multiple of C.
        device, dtype: where to create parameters.

    Shape:
        start: (B, C, h, w); skips: [(B, C, 2h, 2w), (B, C, 4h, 4w), ...]  ->
        ((B, C, *out_size), [stage outputs (B, C, h·2^i, w·2^i)])
    """

    def __init__(self, dim: int, num_stages: int = 3, num_heads: int = 2, ffn_ratio: float = 1.0,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.embed = nn.ModuleList(
            nn.Sequential(ConvBNAct(dim, dim, 3, **dd), ConvBNAct(dim, dim, 3, **dd)) for _ in range(num_stages - 1)
        )
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, ffn_ratio, **dd) for _ in range(num_stages))
        self.norms = nn.ModuleList(LayerNorm2d(dim, **dd) for _ in range(num_stages))
        self.project = ConvBNAct(dim, dim, 3, **dd)

    def forward(self, start: torch.Tensor, skips: list[torch.Tensor],
                out_size: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if len(skips) != len(self.embed):
            raise ValueError(f"expected {len(self.embed)} skip maps, got {len(skips)}")
        x = self.blocks[0](start)
        stages = [self.norms[0](x)]
        for embed, block, norm, skip in zip(self.embed, self.blocks[1:], self.norms[1:], skips):
            x = block(embed(_resize(x, skip.shape[-2:])) + skip)
            stages.append(norm(x))
        total = sum(_resize(s, out_size) for s in stages)
        return self.project(total), stages


# --------------------------------------------------------------------------- head


class DilatedAggregation(nn.Module):
    """Parallel 3×3 units at several dilations, concatenated and squeezed by a 1×1 unit.

    Shape:
        x: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, dilations: tuple[int, ...] = (1, 2, 4, 8),
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.branches = nn.ModuleList(ConvBNAct(in_chs, out_chs, 3, dilation=d, **dd) for d in dilations)
        self.project = ConvBNAct(out_chs * len(dilations), out_chs, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class MultiLabelSegHead(nn.Module):
    """Semantic, binary and boundary predictions from one feature map.

    The binary (foreground) probability gates the features before the semantic classifier, so
    the semantic logits concentrate on objects; the boundary logit is predicted from the gated
    semantic features and the plain ones, and only when asked (training).

    Args:
        dim: feature channels C.
        num_classes: semantic classes K.
        device, dtype: where to create parameters.

    Shape:
        feat: (B, C, h, w)  ->  (semantic (B, K, h, w), binary (B, 1, h, w), boundary (B, 1, h, w) or None)
    """

    def __init__(self, dim: int, num_classes: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        narrow = max(1, dim // 4)
        self.binary = nn.Sequential(ConvBNAct(dim, narrow, 1, **dd), nn.Conv2d(narrow, 1, 3, padding=1, **dd))
        self.semantic_feat = ConvBNAct(dim, dim, 1, **dd)
        self.semantic = nn.Conv2d(dim, num_classes, 3, padding=1, **dd)
        self.boundary = nn.Sequential(ConvBNAct(2 * dim, dim, 1, **dd), nn.Conv2d(dim, 1, 3, padding=1, **dd))

    def forward(self, feat: torch.Tensor,
                with_boundary: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        binary = self.binary(feat)
        semantic_feat = self.semantic_feat(feat * torch.sigmoid(binary))
        boundary = self.boundary(torch.cat((semantic_feat, feat), dim=1)) if with_boundary else None
        return self.semantic(semantic_feat), binary, boundary


# --------------------------------------------------------------------------- decoder


@dataclass
class SegDecoderOutput:
    """Logits at the input size, and the auxiliary predictions (empty unless requested)."""

    logits: torch.Tensor
    aux: dict[str, Any] = field(default_factory=dict)


class SegmentationDecoder(nn.Module):
    """The whole segmentation branch (see the module docstring).

    Args:
        deep_dim: channels C_d of the fused deep levels and of the decoder.
        shallow_dim: channels C_s of the half-resolution PHF feature.
        num_classes: semantic classes K.
        num_heads: attention heads of the transformer stages.
        ffn_ratio: feed-forward width of the transformer stages, as a multiple of C_d.
        aspp_rates: dilation rates of the ASPP.
        aspp_form: ``"public"`` (:class:`ResidualASPP`) or ``"deeplab"`` (:class:`ASPP`).
        device, dtype: where to create parameters.

    Shape:
        deep: four (B, C_d, H/4 … H/32) maps, finest first; half: (B, C_s, H/2, W/2);
        out_size: (H, W)  ->  logits (B, K, H, W), aux as in the module docstring.
    """

    def __init__(self, deep_dim: int, shallow_dim: int, num_classes: int, num_heads: int = 2,
                 ffn_ratio: float = 1.0, aspp_rates: tuple[int, ...] = (6, 12, 18), aspp_form: str = "deeplab",
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if aspp_form not in ASPP_FORMS:
            raise ValueError(f"Unknown aspp_form {aspp_form!r}; expected one of {list(ASPP_FORMS)}")
        dd = factory_kwargs(device, dtype)
        self.pixel_decoder = FPNPixelDecoder([deep_dim] * 4, deep_dim, **dd)
        self.aspp: nn.Module = (ResidualASPP if aspp_form == "public" else ASPP)(deep_dim, tuple(aspp_rates), **dd)
        self.transformer = InvertedPyramidDecoder(deep_dim, 3, num_heads, ffn_ratio, **dd)
        self.refine = nn.Sequential(ConvBNAct(deep_dim, deep_dim, 3, **dd), ConvBNAct(deep_dim, deep_dim, 3, **dd))
        self.aggregate = DilatedAggregation(deep_dim + shallow_dim, deep_dim, **dd)
        self.head = MultiLabelSegHead(deep_dim, num_classes, **dd)
        self.stage_heads = nn.ModuleList(nn.Conv2d(deep_dim, num_classes, 1, **dd) for _ in range(3))

    def forward(self, deep: list[torch.Tensor], half: torch.Tensor, out_size: tuple[int, int],
                with_aux: bool) -> SegDecoderOutput:
        pyramid = self.pixel_decoder(deep)
        start = deep[2] + self.aspp(pyramid[2])
        skips = [self.aspp(pyramid[1]), self.aspp(pyramid[0])]
        feat, stages = self.transformer(start, skips, out_size=tuple(half.shape[-2:]))
        feat = self.aggregate(torch.cat((self.refine(feat), half), dim=1))
        semantic, binary, boundary = self.head(feat, with_boundary=with_aux)
        out = SegDecoderOutput(logits=_resize(semantic, out_size))
        if with_aux:
            out.aux = {
                "binary_logits": _resize(binary, out_size),
                "boundary_logits": _resize(boundary, out_size),
                "aux_logits": [_resize(head(s), out_size) for head, s in zip(self.stage_heads, stages)],
            }
        return out
