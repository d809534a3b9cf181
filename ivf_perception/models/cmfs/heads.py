"""CMFS's fusion head: a Sobel gradient fusion head (its SegFormer decoder is the shared
:class:`~ivf_perception.models.layers.SegFormerHead`, with an SS2D mixer).

Su et al., CMFS (IJCAI 2025); public code ``SuGuilin/IJCAI2025-CMFS`` (``models/decoder_segment.py``,
``models/decoder_fusion.py``, ``models/fusion_utils.py``), read to understand the method; this is
our own implementation.

* :class:`SobelFusionHead` reads each stage's RGB and thermal encoder features, projects each to
  ``embed_dim`` channels (1×1 + BN + ReLU), upsamples them to the image size, concatenates them
  with the input images, and decodes RGB directly: 3×3 conv + BN + ReLU, a gradient residual
  dense block (:class:`GradientResidualDenseBlock`), 1×1 conv to 3 channels, sigmoid.

Departures from the public code, with the reasons:

* Every upsampling uses the sizes of the tensors at hand, so any input size and batch size works.
* The thermal image enters with its one channel (our model contract); the public code repeats it
  to three, which only triples the weights that read it.
* The Sobel branch uses a fixed kernel with replicate padding (:func:`sobel_magnitude`); the
  public one is a trainable convolution initialised to Sobel with zero padding, which can drift
  away from a gradient and marks the image border as an edge. The kernel is left unnormalised,
  as in the public code, so the branch starts at the same scale.
* Weights keep PyTorch's default initialisation; the family file's ``_init_weights`` decides
  (the public training script re-initialises both heads with Kaiming-normal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.factories import DeviceLike, FactoryKwargs, factory_kwargs
from ivf_perception.models.layers.feature_maps import check_feature_dims, check_feature_maps, resize_to
from ivf_perception.models.layers.sobel import Sobel

__all__ = ["GradientResidualDenseBlock", "SobelFusionHead"]


class GradientResidualDenseBlock(nn.Module):
    """Dense 3×3 convolutions plus a Sobel-gradient shortcut (the public code's ``RGBD``).

    ``LeakyReLU_0.1(down(Dense(x)) + up(|∇x|))``: ``Dense`` concatenates the input with two
    3×3 conv + LeakyReLU(0.2) layers (3C channels), ``down`` and ``up`` are 1×1 convs. The
    gradient shortcut carries the edges of both modalities straight to the output, where the
    dense path alone would blur them.

    Args:
        channels: input channels C.
        out_channels: output channels (default C).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, out_channels, H, W)
    """

    def __init__(self, channels: int, out_channels: int | None = None, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        out_channels = out_channels or channels
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, **dd)
        self.conv2 = nn.Conv2d(2 * channels, channels, 3, padding=1, **dd)
        self.conv_down = nn.Conv2d(3 * channels, out_channels, 1, **dd)
        self.sobel = Sobel(normalized=False, border="replicate")
        self.conv_up = nn.Conv2d(channels, out_channels, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.channels)
        dense = torch.cat((x, F.leaky_relu(self.conv1(x), 0.2)), dim=1)
        dense = torch.cat((dense, F.leaky_relu(self.conv2(dense), 0.2)), dim=1)
        return F.leaky_relu(self.conv_down(dense) + self.conv_up(self.sobel(x)), 0.1)


def _point_conv(in_dim: int, out_dim: int, dd: FactoryKwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, **dd), nn.BatchNorm2d(out_dim, **dd), nn.ReLU())


class SobelFusionHead(nn.Module):
    """Decode the fused RGB image from both encoders' multi-scale features and the inputs.

    Args:
        in_dims: channels of each stage's features (the same for both modalities), finest first.
        embed_dim: width of every per-stage projection and of the decoder (16 in CMFS; a small
            preset may shrink it).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        rgb_feats, thermal_feats: lists of (B, in_dims[i], H_i, W_i), finest first;
        rgb: (B, 3, H, W); thermal: (B, 1, H, W)  ->  fused: (B, 3, H, W) in [0, 1]
    """

    def __init__(self, in_dims: Sequence[int], embed_dim: int = 16, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.in_dims = check_feature_dims(in_dims)
        self.embed_dim = embed_dim
        self.rgb_proj = nn.ModuleList(_point_conv(c, embed_dim, dd) for c in self.in_dims)
        self.thermal_proj = nn.ModuleList(_point_conv(c, embed_dim, dd) for c in self.in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * len(self.in_dims) * embed_dim + 4, embed_dim, 3, padding=1, **dd),
            nn.BatchNorm2d(embed_dim, **dd),
            nn.ReLU(),
        )
        self.grdb = GradientResidualDenseBlock(embed_dim, **dd)
        self.to_rgb = nn.Conv2d(embed_dim, 3, 1, **dd)

    def forward(self, rgb_feats: Sequence[torch.Tensor], thermal_feats: Sequence[torch.Tensor], rgb: torch.Tensor,
                thermal: torch.Tensor) -> torch.Tensor:
        check_shape(rgb, "B 3 H W", name="rgb")
        b, _, h, w = rgb.shape
        check_shape(thermal, "B 1 H W", name="thermal", B=b, H=h, W=w)
        check_feature_maps(rgb_feats, self.in_dims, "rgb_feats", b)
        check_feature_maps(thermal_feats, self.in_dims, "thermal_feats", b)
        maps: list[torch.Tensor] = []
        for rgb_proj, thermal_proj, f_rgb, f_thermal in zip(self.rgb_proj, self.thermal_proj, rgb_feats,
                                                            thermal_feats):
            maps += [resize_to(rgb_proj(f_rgb), (h, w)), resize_to(thermal_proj(f_thermal), (h, w))]
        x = self.fuse(torch.cat((*maps, rgb, thermal), dim=1))
        return torch.sigmoid(self.to_rgb(self.grdb(x)))
