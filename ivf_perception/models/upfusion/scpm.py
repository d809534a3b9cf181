"""SCPM, the Semantic-Aware Channel Pruning Module (paper eq. 1; released ``ChannelSelectAndExpandConvWithConvNeXt``).

    ω_C = σ(MLP(GAP(E_0)))                          channel scores of the pre-fused embedding
    ω_S = Linear(mean_7×7 ConvNeXt(resize_224(Conv1×1_{C→3}(E_0))))   semantic scores
    ω_F = ω_C + α·σ(ω_S)
    S   = Conv1×1_{k→C}(gather(E_0, topk(ω_F, k)))  k = int(keep_ratio·C)

As released: the kept channels are gathered in descending-score order and *not* weighted by
their scores, the 224² resize is bilinear without ImageNet normalisation, and the ConvNeXt runs
under ``no_grad``. Because ω_F reaches the output only through top-k indices, ``fc``,
``semantic_fc``, ``to_rgb`` and ``alpha`` never receive a gradient: they keep their initial
values (eq. 1's "learnable" α is not learned). We keep that function (spec §5.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.upfusion.selection import fp32_scores, gather_channels, top_channels

__all__ = ["SCPM"]


class SCPM(nn.Module):
    """Keep the top ``keep_ratio`` channels of ``x`` by channel + semantic score; 1×1 back to C.

    Args:
        channels: C.
        backbone: the frozen semantic tower (a ConvNeXt ``features`` stack).
        backbone_dim: its output channels.
        reduction: the channel MLP's hidden width is ``C // reduction``.
        keep_ratio: fraction of channels kept (0.7: 33 of 48).
        alpha_init: α of eq. 1.
        semantic_size: side of the square resize fed to the tower (224).
        backbone_eval_mode: keep the tower in eval mode while the model trains (our switch; the
            released code trains with torchvision's stochastic depth active, 0.5 for ConvNeXt-B).

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, channels: int, backbone: nn.Module, backbone_dim: int, reduction: int = 8,
                 keep_ratio: float = 0.7, alpha_init: float = 1.0, semantic_size: int = 224,
                 backbone_eval_mode: bool = False, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.keep = int(channels * keep_ratio)
        if not 1 <= self.keep <= channels or channels // reduction < 1:
            raise ValueError(f"SCPM: keep_ratio {keep_ratio} / reduction {reduction} do not fit {channels} channels")
        self.semantic_size = semantic_size
        self.backbone_eval_mode = backbone_eval_mode
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, **dd), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, **dd), nn.Sigmoid())
        self.backbone = backbone
        self.semantic_fc = nn.Linear(backbone_dim, channels, **dd)
        self.to_rgb = nn.Conv2d(channels, 3, 1, bias=False, **dd)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init), **dd))
        self.expand_conv = nn.Conv2d(self.keep, channels, 1, bias=False, **dd)

    def train(self, mode: bool = True) -> SCPM:
        super().train(mode)
        if self.backbone_eval_mode:
            self.backbone.eval()
        return self

    def semantic_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the tower sees: ``resize_224(Conv1×1_{C→3}(x))``, bilinear, no normalisation."""
        size = (self.semantic_size, self.semantic_size)
        return F.interpolate(self.to_rgb(x), size=size, mode="bilinear", align_corners=False)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """ω_F (B, C) in fp32, whatever autocast says."""
        with fp32_scores(x):
            x = x.float()
            omega_c = self.fc(x.mean(dim=(2, 3)))
            with torch.no_grad():
                semantic = self.backbone(self.semantic_input(x)).mean(dim=(2, 3))
            return omega_c + self.alpha * torch.sigmoid(self.semantic_fc(semantic))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The kept channels, highest ω_F first, (B, k) int64."""
        return top_channels(self.scores(x), self.keep)

    def prune(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``Conv1×1_{k→C}(gather(x, indices))``."""
        return self.expand_conv(gather_channels(x, indices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prune(x, self.select(x))
