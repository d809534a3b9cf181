"""Our segmentation head for TeSG (an extension: the paper fuses only).

TeSG's decoder works at a single resolution, so its features see only a few pixels around each
location, too little context to tell a road from a wall. The head first builds a small context
pyramid from the decoder features with Restormer's down-sampler (3×3 conv + pixel unshuffle,
followed by GELU) at strides 2, 4 and 8, then classifies with the shared SegFormer head over
all four levels (finest first), as UP-Fusion and S4Fusion do on their decoders. The pyramid is
why a TeSG with segmentation needs H and W divisible by 8.
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.restormer import Downsample
from ivf_perception.models.layers.segformer_head import SegFormerHead

__all__ = ["CONTEXT_LEVELS", "TeSGSegHead"]

CONTEXT_LEVELS = 3
"""Down-sampling steps of the context pyramid (strides 2, 4, 8)."""


class TeSGSegHead(nn.Module):
    """Context pyramid + SegFormer head on TeSG's decoder features.

    Args:
        dim: channels C of the decoder features.
        num_classes: K.
        embed_dim: SegFormer head width.

    Shape:
        x: (B, C, H, W), H and W divisible by 8  ->  (B, K, H, W)
    """

    multiple = 2 ** CONTEXT_LEVELS

    def __init__(self, dim: int, num_classes: int, embed_dim: int,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        widths = [dim * 2 ** i for i in range(CONTEXT_LEVELS + 1)]
        self.down = nn.ModuleList(nn.Sequential(Downsample(widths[i], **dd), nn.GELU())
                                  for i in range(CONTEXT_LEVELS))
        self.head = SegFormerHead(widths, num_classes, embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [x]
        for down in self.down:
            levels.append(down(levels[-1]))
        return self.head(levels, out_size=(int(x.shape[-2]), int(x.shape[-1])))
