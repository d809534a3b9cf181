"""CMFS's two task heads: a SegFormer-style MLP decoder and a Sobel gradient fusion head.

Su et al., CMFS (IJCAI 2025); public code ``SuGuilin/IJCAI2025-CMFS`` (``models/decoder_segment.py``,
``models/decoder_fusion.py``, ``models/fusion_utils.py``), read to understand the method; this is
our own implementation. SegFormer: Xie et al., NeurIPS 2021.

* :class:`SegFormerMLPHead` reads the fused (MMFE) features of every stage: a 1×1 projection to
  ``embed_dim`` per stage, bilinear upsampling to the finest stage, concatenation (coarsest first,
  as the public code), 1×1 fuse + BN, an SS2D token mixer + LayerNorm (the public code's addition
  to SegFormer, kept; ``ss2d_d_state=None`` gives plain SegFormer), ReLU, dropout, 1×1 classifier,
  and bilinear upsampling of the logits to the requested size.
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
from ivf_perception.models.layers.sobel import Sobel
from ivf_perception.models.layers.ss2d import SS2D

__all__ = ["GradientResidualDenseBlock", "SegFormerMLPHead", "SobelFusionHead"]

_Device = torch.device | str | None


def _check_dims(in_dims: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(in_dims)
    if not dims or any(not isinstance(c, int) or c < 1 for c in dims):
        raise ValueError(f"in_dims must be a non-empty sequence of positive ints, got {dims!r}")
    return dims


def _check_feats(feats: Sequence[torch.Tensor], in_dims: tuple[int, ...], name: str, batch: int | None) -> None:
    """One (B, C_i, H_i, W_i) map per stage, with the documented channels and one batch size."""
    if len(feats) != len(in_dims):
        raise ValueError(f"{name}: expected {len(in_dims)} feature maps (one per entry of in_dims={list(in_dims)}), "
                         f"got {len(feats)}")
    for i, (f, c) in enumerate(zip(feats, in_dims)):
        sizes = {"C": c} if batch is None else {"B": batch, "C": c}
        check_shape(f, "B C H W", name=f"{name}[{i}]", **sizes)
        batch = f.shape[0]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, skipped when the size already matches (an exact no-op, and cheaper)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegFormerMLPHead(nn.Module):
    """SegFormer-style all-MLP decoder with CMFS's SS2D mixer.

    Args:
        in_dims: channels of each stage's features, finest first.
        num_classes: K.
        embed_dim: decoder width (512 in CMFS).
        dropout: ``Dropout2d`` probability before the classifier.
        ss2d_d_state: state size of the SS2D mixer after the fuse conv; ``None`` removes it
            (plain SegFormer, for small presets).
        scan_backend: selective-scan backend of the SS2D mixer.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        feats: list of (B, in_dims[i], H_i, W_i), finest first; out_size: (H, W)
        ->  logits: (B, K, H, W)
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        embed_dim: int = 512,
        dropout: float = 0.1,
        ss2d_d_state: int | None = 16,
        scan_backend: str = "auto",
        device: _Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_dims = _check_dims(in_dims)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1, **dd) for c in self.in_dims)
        self.linear_fuse = nn.Conv2d(len(self.in_dims) * embed_dim, embed_dim, 1, **dd)
        self.fuse_norm = nn.BatchNorm2d(embed_dim, **dd)
        self.mixer: SS2D | None = None
        self.mixer_norm: nn.LayerNorm | None = None
        if ss2d_d_state is not None:
            self.mixer = SS2D(embed_dim, d_state=ss2d_d_state, ssm_ratio=2.0, scan_backend=scan_backend, **dd)
            self.mixer_norm = nn.LayerNorm(embed_dim, **dd)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1, **dd)

    def forward(self, feats: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        _check_feats(feats, self.in_dims, "feats", None)
        if len(out_size) != 2 or any(int(s) < 1 for s in out_size):
            raise ValueError(f"out_size must be (H, W) with positive sizes, got {out_size!r}")
        size = feats[0].shape[-2:]
        projected = [_resize(proj(f), size) for proj, f in zip(self.linear_c, feats)]
        x = self.fuse_norm(self.linear_fuse(torch.cat(projected[::-1], dim=1)))
        if self.mixer is not None and self.mixer_norm is not None:
            x = self.mixer_norm(self.mixer(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        logits = self.linear_pred(self.dropout(F.relu(x)))
        return _resize(logits, (int(out_size[0]), int(out_size[1])))


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

    def __init__(self, channels: int, out_channels: int | None = None, device: _Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
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


def _point_conv(in_dim: int, out_dim: int, dd: dict) -> nn.Sequential:
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

    def __init__(self, in_dims: Sequence[int], embed_dim: int = 16, device: _Device = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_dims = _check_dims(in_dims)
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
        _check_feats(rgb_feats, self.in_dims, "rgb_feats", b)
        _check_feats(thermal_feats, self.in_dims, "thermal_feats", b)
        maps: list[torch.Tensor] = []
        for rgb_proj, thermal_proj, f_rgb, f_thermal in zip(self.rgb_proj, self.thermal_proj, rgb_feats,
                                                            thermal_feats):
            maps += [_resize(rgb_proj(f_rgb), (h, w)), _resize(thermal_proj(f_thermal), (h, w))]
        x = self.fuse(torch.cat((*maps, rgb, thermal), dim=1))
        return torch.sigmoid(self.to_rgb(self.grdb(x)))
