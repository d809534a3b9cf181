"""CMFS's Multi-modal Interaction Alignment (MIA): BiMamba per modality, then MMFI.

Paper (Su et al., IJCAI 2025), MIA at every encoder stage:

1. each modality's features are channel-shuffled (groups 2) and mixed by a bidirectional
   Mamba block (d_state 16) with a residual;
2. MMFI exchanges information between the modalities region by region (eq. 5)::

       out_rgb     = (x_th  ⊙ (CA(x_rgb) + SA(x_rgb))) ⊙ G       ⊙ M + x_rgb
       out_thermal = (x_rgb ⊙ (CA(x_th)  + SA(x_th)))  ⊙ (1 − G) ⊙ M + x_th

   CA is channel attention from the average- and max-pooled features of each region, SA spatial
   attention from the channel mean and max, G a learnable per-pixel gate from both modalities
   and M the CLIP region map: the image is split into N×N regions (5×5 at stages 0–1, 1×1 at
   stages 2–3), a learned projection of each region of a guide feature is compared by cosine
   similarity with the CLIP text features of "the photo of a {class}", and conv + sigmoid turn
   the similarities into one weight per region.

Differences from the public code, on purpose:

* Regions come from the actual feature size (pixel ``y`` belongs to region ``⌊y·N/H⌋``), and
  each region is resampled to a fixed ``region_pool`` grid before its projection, so any input
  size works. The public code fixes the region geometry at build time (480×640 only). With the
  paper preset's pools (the regions' sizes at 480×640) the projection is the paper's exactly.
* The region-map convs run over the N×N grid of regions (neighbouring regions inform each
  other). The public code applies its 3×3 convs to each region's 1×1 map alone, which reduces
  them to their centre taps; at stages 2–3 (one region) the two are identical.
* Spatial attention runs over the whole map instead of region by region, so its 3×3 conv sees
  across region borders; inside a region the result is the same.
* One LayerNorm before the bidirectional Mamba (the public block stacks a LayerNorm and the
  mixer's own RMSNorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.adaptive_pool import adaptive_avg_pool2d, adaptive_max_pool2d
from ivf_perception.models.layers.bimamba import BidirectionalMamba
from ivf_perception.models.layers.channel_shuffle import channel_shuffle
from ivf_perception.models.layers.factories import FactoryKwargs, factory_kwargs

__all__ = ["MIA", "MMFI", "RegionTextGate", "channel_shuffle"]


class RegionTextGate(nn.Module):
    """The CLIP region map M: one weight in (0, 1) per region, from region-text similarity.

    Args:
        regions: N, the image is split into N×N regions.
        region_pool: (ph, pw) grid every region is resampled to before its projection.
        num_prompts: T, rows of the text features.
        text_dim: width of the text features (512 for CLIP ViT-B/32).
        hidden: channels of the first conv over the similarity map.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        guide: (B, C, H, W), text: (T, text_dim)  ->  (B, 1, N, N)
    """

    def __init__(self, regions: int, region_pool: tuple[int, int], num_prompts: int, text_dim: int = 512,
                 hidden: int = 32, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if regions < 1 or min(region_pool) < 1 or num_prompts < 1:
            raise ValueError(f"regions ({regions}), region_pool ({region_pool}) and num_prompts ({num_prompts}) "
                             "must be >= 1")
        dd = factory_kwargs(device, dtype)
        self.regions = regions
        self.region_pool = (int(region_pool[0]), int(region_pool[1]))
        self.num_prompts = num_prompts
        self.proj = nn.Linear(self.region_pool[0] * self.region_pool[1], text_dim, **dd)
        self.conv1 = nn.Conv2d(num_prompts, hidden, 3, padding=1, **dd)
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1, **dd)

    def similarity(self, guide: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every region's projection with every prompt: (B, T, N, N)."""
        check_shape(guide, "B C H W", name="guide")
        check_shape(text, "T D", name="text_features", T=self.num_prompts, D=self.proj.out_features)
        b = guide.shape[0]
        n, (ph, pw) = self.regions, self.region_pool
        pooled = adaptive_avg_pool2d(guide.mean(dim=1, keepdim=True), (n * ph, n * pw))
        per_region = pooled.view(b, n, ph, n, pw).permute(0, 1, 3, 2, 4).reshape(b, n, n, ph * pw)
        region_emb = F.normalize(self.proj(per_region), dim=-1)
        text_emb = F.normalize(text.to(region_emb.dtype), dim=-1)
        return (region_emb @ text_emb.t()).permute(0, 3, 1, 2)

    def forward(self, guide: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(F.relu(self.conv1(self.similarity(guide, text)))))


def _squeeze_mlp(in_features: int, out_features: int, reduction: int, dd: FactoryKwargs) -> nn.Sequential:
    hidden = max(in_features // reduction, 1)
    return nn.Sequential(nn.Linear(in_features, hidden, **dd), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features, **dd))


class MMFI(nn.Module):
    """Multi-modal feature interaction of eq. 5 (see the module docstring).

    Args:
        dim: channels C of each modality.
        regions: N of the region partition.
        region_pool: per-region resampling grid of the region map's projection.
        num_prompts: rows of the text features.
        text_dim: width of the text features.
        reduction: squeeze ratio of the channel attention and gate MLPs.
        use_text_gate: build the CLIP region map; ``False`` is ablation II (M = 1).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x_rgb, x_thermal, guide: (B, C, H, W); text: (T, text_dim)  ->  two (B, C, H, W)
    """

    def __init__(self, dim: int, regions: int, region_pool: tuple[int, int], num_prompts: int, text_dim: int = 512,
                 reduction: int = 4, use_text_gate: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.regions = regions
        self.channel_mlp = nn.ModuleList(_squeeze_mlp(2 * dim, dim, reduction, dd) for _ in range(2))
        self.spatial_conv = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2, 4 * reduction, 3, padding=1, **dd), nn.ReLU(inplace=True),
                          nn.Conv2d(4 * reduction, 1, 1, **dd))
            for _ in range(2)
        )
        self.gate = _squeeze_mlp(2 * dim, dim, reduction, dd)
        self.region_gate = (RegionTextGate(regions, region_pool, num_prompts, text_dim, **dd)
                            if use_text_gate else None)

    def _channel_attention(self, x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
        """Per-region channel weights from the region's average and maximum, at pixel resolution."""
        n = self.regions
        pooled = torch.cat((adaptive_avg_pool2d(x, n), adaptive_max_pool2d(x, n)), dim=1)
        weights = torch.sigmoid(mlp(pooled.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return F.interpolate(weights, size=x.shape[-2:], mode="nearest")

    @staticmethod
    def _spatial_attention(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        stats = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        return torch.sigmoid(conv(stats))

    def region_map(self, guide: torch.Tensor, text: torch.Tensor) -> torch.Tensor | None:
        """M at pixel resolution (B, 1, H, W), or ``None`` without the CLIP region map."""
        if self.region_gate is None:
            return None
        return F.interpolate(self.region_gate(guide, text), size=guide.shape[-2:], mode="nearest")

    def forward(self, x_rgb: torch.Tensor, x_thermal: torch.Tensor, guide: torch.Tensor | None,
                text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x_rgb, "B C H W", name="x_rgb", C=self.dim)
        check_shape(x_thermal, "B C H W", name="x_thermal", B=x_rgb.shape[0], C=self.dim,
                    H=x_rgb.shape[2], W=x_rgb.shape[3])
        gate = torch.sigmoid(self.gate(torch.cat((x_rgb, x_thermal), dim=1).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        att_rgb = (self._channel_attention(x_rgb, self.channel_mlp[0])
                   + self._spatial_attention(x_rgb, self.spatial_conv[0]))
        att_thermal = (self._channel_attention(x_thermal, self.channel_mlp[1])
                       + self._spatial_attention(x_thermal, self.spatial_conv[1]))
        to_rgb = x_thermal * att_rgb * gate
        to_thermal = x_rgb * att_thermal * (1.0 - gate)
        region = self.region_map(guide, text) if guide is not None else None
        if region is not None:
            to_rgb, to_thermal = to_rgb * region, to_thermal * region
        return x_rgb + to_rgb, x_thermal + to_thermal


class MIA(nn.Module):
    """One MIA module: guide feature, channel shuffle + BiMamba per modality, then MMFI.

    Args:
        dim: channels C of each modality.
        regions: N of the region partition (5 at stages 0–1, 1 at stages 2–3).
        region_pool: per-region resampling grid of the region map's projection.
        num_prompts: rows of the text features.
        text_dim: width of the text features.
        bimamba_d_state: state size of the bidirectional Mamba blocks (16 in the paper).
        bimamba_expand: inner width of the bidirectional Mamba blocks.
        guide_squeeze: squeeze ratio of the guide feature's 1×1 convs.
        use_bimamba: build the BiMamba blocks; ``False`` is ablation I.
        use_text_gate: build the CLIP region map; ``False`` is ablation II.
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x_rgb, x_thermal: (B, C, H, W); text: (T, text_dim)  ->  two (B, C, H, W)
    """

    def __init__(self, dim: int, regions: int, region_pool: tuple[int, int], num_prompts: int, text_dim: int = 512,
                 bimamba_d_state: int = 16, bimamba_expand: float = 2.0, guide_squeeze: int = 16,
                 use_bimamba: bool = True, use_text_gate: bool = True, scan_backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.guide: nn.Module | None = None
        if use_text_gate:
            hidden = max(2 * dim // guide_squeeze, 1)
            self.guide = nn.Sequential(nn.Conv2d(2 * dim, hidden, 1, bias=False, **dd), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden, dim, 1, bias=False, **dd))
        self.mamba = nn.ModuleList()
        self.mamba_norm = nn.ModuleList()
        if use_bimamba:
            for _ in range(2):
                self.mamba_norm.append(nn.LayerNorm(dim, **dd))
                self.mamba.append(BidirectionalMamba(dim, d_state=bimamba_d_state, expand=bimamba_expand,
                                                     scan_backend=scan_backend, **dd))
        self.mmfi = MMFI(dim, regions, region_pool, num_prompts, text_dim, use_text_gate=use_text_gate, **dd)

    @staticmethod
    def _bimamba(x: torch.Tensor, norm: nn.Module, mixer: nn.Module) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = channel_shuffle(x).flatten(2).transpose(1, 2)  # (B, H·W, C), row-major
        tokens = tokens + mixer(norm(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x_rgb: torch.Tensor, x_thermal: torch.Tensor,
                text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        guide = self.guide(torch.cat((x_rgb, x_thermal), dim=1)) if self.guide is not None else None
        if len(self.mamba):
            x_rgb = self._bimamba(x_rgb, self.mamba_norm[0], self.mamba[0])
            x_thermal = self._bimamba(x_thermal, self.mamba_norm[1], self.mamba[1])
        return self.mmfi(x_rgb, x_thermal, guide, text)
