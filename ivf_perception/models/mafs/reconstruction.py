"""MAFS stage I: the masked-autoencoder reconstruction decoder.

Stage I trains the encoder and the fuser self-supervised: both inputs arrive with 32×32 patches
masked out, and this decoder predicts the complete visible and infrared images from the fused
features (the loss, on the masked regions only, lives in the training package). It reads the
full-resolution fused feature and a summary of all four fused deep levels, so every encoder and
fuser parameter learns in stage I, not only those on the path to the fusion image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.mafs.blocks import ConvBNAct
from ivf_perception.models.mafs.encoder import PHF

__all__ = ["MaskedReconstructionDecoder"]


class MaskedReconstructionDecoder(nn.Module):
    """Fused features → reconstructed visible (RGB) and infrared images in [0, 1].

    The deep levels are resized to the finest one (H/4), concatenated and squeezed to a context
    map, which modulates the full-resolution feature through a PHF step (the same
    semantics-steer-detail operation as the encoder's); a 3×3 unit and two 3×3 conv + tanh heads
    follow, the paper's output form for images.

    Args:
        shallow_dim: channels C_s of the full-resolution fused feature.
        deep_dim: channels C_d of each fused deep level.
        num_deep: number of deep levels.
        device, dtype: where to create parameters.

    Shape:
        image_feat: (B, C_s, H, W); deep: [(B, C_d, H/4, W/4), ..., (B, C_d, H/32, W/32)]  ->
        (rgb (B, 3, H, W), thermal (B, 1, H, W)), both in [0, 1]
    """

    def __init__(self, shallow_dim: int, deep_dim: int, num_deep: int = 4, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.context = ConvBNAct(deep_dim * num_deep, shallow_dim, 1, **dd)
        self.modulate = PHF(shallow_dim, shallow_dim, hidden=shallow_dim, **dd)
        self.refine = ConvBNAct(shallow_dim, shallow_dim, 3, **dd)
        self.to_rgb = nn.Conv2d(shallow_dim, 3, 3, padding=1, **dd)
        self.to_thermal = nn.Conv2d(shallow_dim, 1, 3, padding=1, **dd)

    def forward(self, image_feat: torch.Tensor, deep: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        size = deep[0].shape[-2:]
        stacked = [deep[0], *(F.interpolate(d, size=size, mode="bilinear", align_corners=False) for d in deep[1:])]
        x = self.refine(self.modulate(image_feat, self.context(torch.cat(stacked, dim=1))))
        return (torch.tanh(self.to_rgb(x)) + 1) / 2, (torch.tanh(self.to_thermal(x)) + 1) / 2
