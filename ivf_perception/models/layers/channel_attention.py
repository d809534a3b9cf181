"""Squeeze-and-excitation channel attention (RCAN) and the conv block around it (CAB).

Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel Attention Networks"
(RCAN), ECCV 2018; the channel-attention block (CAB) is HAT's/MambaIR's. Global average
pooling summarises each channel over the whole map, a bottleneck MLP (1×1 convs) turns the
summary into a per-channel weight in (0, 1), and the map is rescaled by it: a cheap global
re-weighting that a local conv or a 1-D scan cannot learn. CMFS uses CAB in its FSC spatial
branch and a GELU variant of the attention at FSC's output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.factories import factory_kwargs

__all__ = ["ChannelAttention", "ChannelAttentionBlock"]


def _reduced(channels: int, factor: int, what: str) -> int:
    """``channels // factor``, at least 1 so small test widths still build."""
    if factor < 1:
        raise ValueError(f"{what} must be >= 1, got {factor}")
    return max(1, channels // factor)


class ChannelAttention(nn.Module):
    """RCAN channel attention: ``x * sigmoid(conv(act(conv(avgpool(x)))))``.

    Args:
        channels: channels C.
        squeeze_factor: bottleneck width is ``max(1, C // squeeze_factor)``.
        act_layer: activation constructor of the bottleneck (RCAN: ReLU; CMFS's FSC output: GELU).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(
        self,
        channels: int,
        squeeze_factor: int = 16,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden = _reduced(channels, squeeze_factor, "squeeze_factor")
        self.channels = channels
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1, **dd),
            act_layer(),
            nn.Conv2d(hidden, channels, 1, **dd),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.channels)
        return x * self.attention(x)


class ChannelAttentionBlock(nn.Module):
    """CAB: 3×3 conv (compress) → GELU → 3×3 conv (expand) → :class:`ChannelAttention`.

    Args:
        channels: channels C.
        compress_ratio: hidden width is ``max(1, C // compress_ratio)`` (HAT/MambaIR: 3).
        squeeze_factor: squeeze factor of the channel attention (HAT/MambaIR: 30; CMFS: 12).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(
        self,
        channels: int,
        compress_ratio: int = 3,
        squeeze_factor: int = 12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden = _reduced(channels, compress_ratio, "compress_ratio")
        self.channels = channels
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, **dd),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 3, padding=1, **dd),
            ChannelAttention(channels, squeeze_factor, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.channels)
        return self.body(x)
