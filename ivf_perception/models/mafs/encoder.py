"""MAFS encoder: two ResNet streams with cross-modal gating, and the heterogeneous fusion of their features.

Levels, for an H×W input (paper preset channels in brackets):

* shallow 1, H×W: SFE's full-resolution branch (32 per modality);
* shallow 2, H/2: SFE's strided branch through the trunk's stem BatchNorm (64), then DEM 0;
* deep 1…4, H/4 … H/32: the four ResNet stages (256, 512, 1024, 2048), each stage's input
  passing through a DEM first (so DEM 1…3 act on the outputs of stages 1…3).

:class:`DualResNetEncoder` produces both streams; :class:`MAFSFuser` fuses them: AFM on the two
shallow levels, CAM on the four deep levels, and PHF progressively injects the deep semantics
into the shallow detail (deep 1 → shallow 2 → shallow 1), eq. 5 of the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.layers.channel_attention import ChannelAttention
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.mafs.blocks import ConvBNAct, DenseConvBlock, FReLU
from ivf_perception.models.mafs.trunk import ResNetTrunk

__all__ = [
    "DEM_CONVS",
    "DEM_MIXES",
    "AFM",
    "CAM",
    "DEM",
    "PHF",
    "SFE",
    "ChannelSelfAttention",
    "DualResNetEncoder",
    "FusedFeatures",
    "MAFSFuser",
]


DEM_MIXES = ("public", "residual")
"""How a :class:`DEM` hands the attention-weighted modalities to the two streams."""

DEM_CONVS = ("pairs", "depthwise")
"""Grouping of the 7×7 convolution in a :class:`DEM`'s complementary gate."""


# --------------------------------------------------------------------------- encoder blocks


class SFE(nn.Module):
    """Shallow feature extraction, which replaces the ResNet's 7×7 stride-2 stem convolution.

    A full-resolution branch (7×7 then 3×3, FReLU) keeps the fine texture the fusion image
    needs and that a stride-2 stem throws away; a strided branch brings it to the trunk's stem
    width at H/2. The strided branch ends without normalisation: the trunk's pretrained stem
    BatchNorm follows.

    Args:
        in_chans: image channels (3 visible, 1 thermal).
        out_chs: the trunk's stem width; the full-resolution branch has half of it.
        device, dtype: where to create parameters.

    Shape:
        x: (B, in_chans, H, W)  ->  ((B, out_chs/2, H, W), (B, out_chs, ⌈H/2⌉, ⌈W/2⌉))
    """

    def __init__(self, in_chans: int, out_chs: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        half = out_chs // 2
        self.full = nn.Sequential(
            ConvBNAct(in_chans, half, 7, act_layer=None, **dd), FReLU(half, **dd),
            ConvBNAct(half, half, 3, act_layer=None, **dd), FReLU(half, **dd),
        )
        self.down = nn.Sequential(
            ConvBNAct(half, out_chs, 3, stride=2, act_layer=None, **dd), FReLU(out_chs, **dd),
            nn.Conv2d(out_chs, out_chs, 3, padding=1, **dd),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.full(x)
        return full, self.down(full)


class DEM(nn.Module):
    """Dynamic extraction module: gated cross-modal exchange before a ResNet stage.

    1. A consistency gate ``c = σ(τ · ĝ_v ⊙ ĝ_t)`` per channel, from the L2-normalised global
       descriptors ``ĝ = normalize(MLP(GAP(x)))`` of both modalities (shared MLP): channels on
       which the modalities agree are routed through the gated path.
    2. A complementary gate per channel and modality, ``σ(MLP(GMP(conv7×7([x_v c, x_t c]))))``,
       re-weights the agreed part: ``x' = x (1 − c) + (x c) ⊙ gate``.
    3. A spatial softmax ``(a_v, a_t)`` over the two modalities (1×1 conv scores) says where each
       modality is more informative. ``mix`` decides what each stream receives:

       * ``"public"`` (the public code's EAEF, the ``paper`` preset): ``v_out = a_v v' + a_t t'``,
         ``t_out = a_t t'``: the visible stream becomes the attention-weighted fusion and the
         thermal stream is scaled by its own weight;
       * ``"residual"`` (ours before issue 15, a switch): ``v_out = v' + a_t t'``,
         ``t_out = t' + a_v v'``: a symmetric exchange that never shrinks either stream (the
         public rule multiplies the thermal stream by ``a_t < 1`` at each of the four DEMs).

    ``conv`` is the 7×7 convolution of step 2: ``"pairs"`` (the public code's
    ``Conv2d(2C, 2C, groups=C)``: each group mixes two neighbouring channels of the same
    modality) or ``"depthwise"`` (ours before issue 15, ``groups=2C``).

    The temperature τ starts at C so that τ·ĝ_v·ĝ_t (each term about 1/C) is O(1).

    Args:
        channels: channels C of both streams.
        mlp_ratio: hidden width of the descriptor MLP, as a multiple of C.
        gate_reduction: the complementary gate's MLP squeezes 2C by this factor.
        kernel_size: kernel of the complementary gate's convolution.
        mix: ``"public"`` or ``"residual"`` (above).
        conv: ``"pairs"`` or ``"depthwise"`` (above).
        device, dtype: where to create parameters.

    Shape:
        rgb, thermal: (B, C, H, W)  ->  (rgb', thermal'), each (B, C, H, W)
    """

    def __init__(self, channels: int, mlp_ratio: float = 2.0, gate_reduction: int = 16, kernel_size: int = 7,
                 mix: str = "residual", conv: str = "depthwise", device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if mix not in DEM_MIXES or conv not in DEM_CONVS:
            raise ValueError(f"DEM mix must be one of {list(DEM_MIXES)} and conv one of {list(DEM_CONVS)}, "
                             f"got mix={mix!r}, conv={conv!r}")
        dd = factory_kwargs(device, dtype)
        self.mix = mix
        hidden = max(1, int(round(channels * mlp_ratio)))
        gate_hidden = max(1, 2 * channels // gate_reduction)
        self.channels = channels
        self.descriptor = nn.Sequential(nn.Linear(channels, hidden, **dd), nn.GELU(), nn.Linear(hidden, channels, **dd))
        self.temperature = nn.Parameter(torch.full((), float(channels), **dd))
        self.local = nn.Conv2d(2 * channels, 2 * channels, kernel_size, padding=kernel_size // 2,
                               groups=channels if conv == "pairs" else 2 * channels, **dd)
        self.gate = nn.Sequential(nn.Linear(2 * channels, gate_hidden, **dd), nn.GELU(),
                                  nn.Linear(gate_hidden, 2 * channels, **dd))
        self.score_rgb = nn.Conv2d(channels, 1, 1, **dd)
        self.score_thermal = nn.Conv2d(channels, 1, 1, **dd)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        desc_v = F.normalize(self.descriptor(rgb.mean(dim=(2, 3))), dim=1)
        desc_t = F.normalize(self.descriptor(thermal.mean(dim=(2, 3))), dim=1)
        agree = torch.sigmoid(self.temperature * desc_v * desc_t)[:, :, None, None]
        rgb_a, thermal_a = rgb * agree, thermal * agree
        local = self.local(torch.cat((rgb_a, thermal_a), dim=1)).amax(dim=(2, 3))
        gate_v, gate_t = torch.sigmoid(self.gate(local))[:, :, None, None].split(self.channels, dim=1)
        rgb = rgb * (1 - agree) + rgb_a * gate_v
        thermal = thermal * (1 - agree) + thermal_a * gate_t
        weights = torch.softmax(torch.cat((self.score_rgb(rgb), self.score_thermal(thermal)), dim=1), dim=1)
        a_v, a_t = weights[:, :1], weights[:, 1:]
        if self.mix == "public":
            return a_v * rgb + a_t * thermal, a_t * thermal
        return rgb + a_t * thermal, thermal + a_v * rgb


class DualResNetEncoder(nn.Module):
    """Two ResNet streams (visible, thermal), each with its own SFE, coupled by a DEM before every stage.

    Args:
        rgb_trunk: timm ResNet name of the visible stream.
        thermal_trunk: timm ResNet name of the thermal stream; its stem and stage widths must
            equal the visible trunk's (e.g. ResNet-18 with ResNet-34, or 50/101/152 together).
        dem_mlp_ratio: hidden width of the DEM descriptor MLP, as a multiple of the channels.
        dem_mix, dem_conv: see :class:`DEM`.
        device, dtype: where to create parameters.

    Attributes:
        level_chs: channels of the six levels (shallow 1, shallow 2, deep 1…4).

    Shape:
        rgb: (B, 3, H, W), thermal: (B, 1, H, W)  ->  (rgb levels, thermal levels), two lists of
        six maps at H, H/2, H/4, H/8, H/16, H/32 (each size rounded up), channels ``level_chs``.
    """

    def __init__(self, rgb_trunk: str, thermal_trunk: str, dem_mlp_ratio: float = 2.0, dem_mix: str = "residual",
                 dem_conv: str = "depthwise", device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.trunk_rgb = ResNetTrunk(rgb_trunk, **dd)
        self.trunk_thermal = ResNetTrunk(thermal_trunk, **dd)
        rgb_widths = [self.trunk_rgb.stem_chs, *self.trunk_rgb.stage_chs]
        thermal_widths = [self.trunk_thermal.stem_chs, *self.trunk_thermal.stage_chs]
        if rgb_widths != thermal_widths:
            raise ValueError(
                f"Trunks {rgb_trunk} {rgb_widths} and {thermal_trunk} {thermal_widths} "
                "differ in width; the cross-modal modules need equal widths (pair resnet18 with resnet34, "
                "or resnet50/101/152 with each other)"
            )
        stem = self.trunk_rgb.stem_chs
        self.sfe_rgb = SFE(3, stem, **dd)
        self.sfe_thermal = SFE(1, stem, **dd)
        stage_in = [stem, *self.trunk_rgb.stage_chs[:3]]
        self.dem = nn.ModuleList(DEM(c, mlp_ratio=dem_mlp_ratio, mix=dem_mix, conv=dem_conv, **dd) for c in stage_in)
        self.level_chs = [stem // 2, stem, *self.trunk_rgb.stage_chs]

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        full_v, v = self.sfe_rgb(rgb)
        full_t, t = self.sfe_thermal(thermal)
        v, t = self.dem[0](self.trunk_rgb.stem(v), self.trunk_thermal.stem(t))
        levels_v, levels_t = [full_v, v], [full_t, t]
        for i in range(4):
            v, t = self.trunk_rgb.stage(i, v), self.trunk_thermal.stage(i, t)
            if i < 3:
                v, t = self.dem[i + 1](v, t)
            levels_v.append(v)
            levels_t.append(t)
        return levels_v, levels_t


# --------------------------------------------------------------------------- fusion blocks


class AFM(nn.Module):
    """Adaptive fusion module for a shallow level: attention-weighted average of the modalities.

    Each modality is embedded by ``units`` 3×3 conv units (the public SDFM: 3; ours before
    issue 15: 2, a switch); the concatenation is recalibrated by
    squeeze-and-excitation (``s + s ⊙ SE(s)``); a weight map ``w = σ(L(a) + G(a))`` from a local
    (point-wise) and a global (pooled) attention on the squeezed concatenation ``a`` then mixes
    them, ``w ⊙ f_v + (1 − w) ⊙ f_t``, the multi-scale channel attention of attentional feature
    fusion: a convex combination keeps the fused detail in the range of the inputs.

    Args:
        in_chs: channels of each modality at this level.
        out_chs: fused channels.
        reduction: bottleneck reduction of the attentions.
        units: 3×3 conv units embedding each modality (>= 1).
        device, dtype: where to create parameters.

    Shape:
        rgb, thermal: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, reduction: int = 4, units: int = 2, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if units < 1:
            raise ValueError(f"AFM needs at least one conv unit per modality, got units={units}")
        dd = factory_kwargs(device, dtype)
        hidden = max(1, out_chs // reduction)
        self.out_chs = out_chs
        self.embed_rgb = nn.Sequential(*(ConvBNAct(in_chs if i == 0 else out_chs, out_chs, **dd) for i in range(units)))
        self.embed_thermal = nn.Sequential(
            *(ConvBNAct(in_chs if i == 0 else out_chs, out_chs, **dd) for i in range(units)))
        # GELU in the pooled bottlenecks: with a handful of hidden units (narrow presets), a ReLU
        # unit that is negative for every image never recovers. No BatchNorm on pooled 1×1 maps:
        # it fails in training at batch size 1.
        self.recalibrate = ChannelAttention(2 * out_chs, squeeze_factor=reduction, act_layer=nn.GELU, **dd)
        self.squeeze = ConvBNAct(2 * out_chs, out_chs, 1, **dd)
        self.local = nn.Sequential(ConvBNAct(out_chs, hidden, 1, **dd),
                                   ConvBNAct(hidden, out_chs, 1, act_layer=None, **dd))
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_chs, hidden, 1, **dd), nn.GELU(),
                                     nn.Conv2d(hidden, out_chs, 1, **dd))

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        both = torch.cat((self.embed_rgb(rgb), self.embed_thermal(thermal)), dim=1)
        both = both + self.recalibrate(both)
        f_v, f_t = both.split(self.out_chs, dim=1)
        squeezed = self.squeeze(both)
        weight = torch.sigmoid(self.local(squeezed) + self.context(squeezed))
        return weight * f_v + (1 - weight) * f_t


class ChannelSelfAttention(nn.Module):
    """Channel self-attention (DANet's CAM module): ``x + γ · softmax(−X Xᵀ) X``, computed in fp32.

    Every channel is re-expressed as a mixture of all channels, weighted by (dis)similarity of
    their maps; DANet writes the weights as ``softmax(max(E) − E)``, which equals ``softmax(−E)``.
    γ starts at 0, so the module starts as the identity and learns how much mixing helps.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The energies are sums over all pixels (~1e4 at H/4 of a 480×640 image) and overflow
        # fp16, so the products run in fp32 even under autocast.
        flat = x.flatten(2).float()
        with torch.autocast(x.device.type if x.device.type in ("cpu", "cuda") else "cpu", enabled=False):
            attn = torch.softmax(-torch.bmm(flat, flat.transpose(1, 2)), dim=-1)
            mixed = torch.bmm(attn, flat)
        return x + self.gamma * mixed.view_as(x).to(x.dtype)


class CAM(nn.Module):
    """Cross-modal attention module for a deep level: spatial then channel attention.

    The sum of the modalities is embedded (3×3 conv unit) and gated by a spatial attention
    computed from their product (where both respond, ``σ(conv3×3(max_c(v ⊙ t)))``); channel
    self-attention then mixes the channels of the result.

    Args:
        in_chs: channels of each modality at this level.
        out_chs: fused channels.
        device, dtype: where to create parameters.

    Shape:
        rgb, thermal: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.embed = ConvBNAct(in_chs, out_chs, 3, act_layer=partial(nn.LeakyReLU, 0.1), **dd)
        self.spatial = nn.Conv2d(1, 1, 3, padding=1, bias=False, **dd)
        self.channel = ChannelSelfAttention(**dd)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        where = torch.sigmoid(self.spatial((rgb * thermal).amax(dim=1, keepdim=True)))
        return self.channel(self.embed(rgb + thermal) * where)


class PHF(nn.Module):
    """Progressive heterogeneous fusion step (eq. 5): deep semantics modulate shallow detail.

    ``F = BN(IN(F_s) ⊙ (1 + γ(F_d↑))) + β(F_d↑)``, where ``F_d↑`` is the deeper feature resized
    to the shallow one, ``γ = σ(conv3×3(a))``, ``β = conv3×3(a)`` and ``a = ReLU(conv3×3(F_d↑))``:
    a spatially varying affine modulation (SPADE-like), so semantics steer the detail of the
    fusion image without replacing it. Applied twice, deep 1 → shallow 2 → shallow 1.

    Args:
        shallow_chs: channels of the shallow (modulated) feature and of the output.
        deep_chs: channels of the deeper (modulating) feature.
        hidden: channels of the shared modulation embedding.
        device, dtype: where to create parameters.

    Shape:
        shallow: (B, shallow_chs, H, W), deep: (B, deep_chs, h, w)  ->  (B, shallow_chs, H, W)
    """

    def __init__(self, shallow_chs: int, deep_chs: int, hidden: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.norm = nn.InstanceNorm2d(shallow_chs, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(deep_chs, hidden, 3, padding=1, **dd), nn.ReLU())
        self.gamma = nn.Sequential(nn.Conv2d(hidden, shallow_chs, 3, padding=1, **dd), nn.Sigmoid())
        self.beta = nn.Conv2d(hidden, shallow_chs, 3, padding=1, **dd)
        self.bn = nn.BatchNorm2d(shallow_chs, **dd)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        if deep.shape[-2:] != shallow.shape[-2:]:
            deep = F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        act = self.shared(deep)
        return self.bn(self.norm(shallow) * (1 + self.gamma(act))) + self.beta(act)


# --------------------------------------------------------------------------- fuser


@dataclass
class FusedFeatures:
    """What :class:`MAFSFuser` produces.

    Attributes:
        image: (B, C_s, H, W) full-resolution feature for the fusion and reconstruction decoders.
        half: (B, C_s, H/2, W/2) the first PHF output (deep 1 → shallow 2), a detail skip for
            the segmentation decoder.
        deep: four (B, C_d, H/2^(i+2), W/2^(i+2)) fused deep levels, finest first.
    """

    image: torch.Tensor
    half: torch.Tensor
    deep: list[torch.Tensor]


class MAFSFuser(nn.Module):
    """Heterogeneous fusion of the two streams: AFM (shallow), CAM (deep), PHF (progressive).

    Args:
        level_chs: channels of the encoder's six levels (:attr:`DualResNetEncoder.level_chs`).
        shallow_dim: fused channels C_s of the shallow levels (the fusion decoder's width).
        deep_dim: fused channels C_d of the deep levels (the segmentation decoder's width).
        refine_layers: dense 3×3 layers refining the full-resolution feature.
        afm_units: 3×3 conv units per modality in each :class:`AFM`.
        device, dtype: where to create parameters.

    Shape:
        rgb_levels, thermal_levels: the encoder's two lists  ->  :class:`FusedFeatures`
    """

    def __init__(self, level_chs: list[int], shallow_dim: int, deep_dim: int, refine_layers: int,
                 afm_units: int = 2, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        if len(level_chs) != 6:
            raise ValueError(f"expected the channels of 6 encoder levels, got {level_chs}")
        self.afm = nn.ModuleList(AFM(c, shallow_dim, units=afm_units, **dd) for c in level_chs[:2])
        self.cam = nn.ModuleList(CAM(c, deep_dim, **dd) for c in level_chs[2:])
        self.phf_half = PHF(shallow_dim, deep_dim, hidden=shallow_dim, **dd)
        self.phf_full = PHF(shallow_dim, shallow_dim, hidden=shallow_dim, **dd)
        self.refine = DenseConvBlock(shallow_dim, refine_layers, **dd)

    def forward(self, rgb_levels: list[torch.Tensor], thermal_levels: list[torch.Tensor]) -> FusedFeatures:
        full, half = (afm(v, t) for afm, v, t in zip(self.afm, rgb_levels[:2], thermal_levels[:2]))
        deep = [cam(v, t) for cam, v, t in zip(self.cam, rgb_levels[2:], thermal_levels[2:])]
        half = self.phf_half(half, deep[0])
        image = self.refine(self.phf_full(full, half))
        return FusedFeatures(image=image, half=half, deep=deep)
