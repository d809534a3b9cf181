"""Small convolution blocks shared by the MAFS modules.

MAFS is a convolutional network built around two ImageNet ResNets, so its own modules are made of
the same conv → BatchNorm → activation unit; keeping that unit (and the funnel activation of the
shallow extractor) in one place keeps the state-dict names of every module alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs

__all__ = ["ConvBNAct", "FReLU", "DenseConvBlock"]


class ConvBNAct(nn.Module):
    """Convolution → BatchNorm → activation, with "same" padding for any kernel and dilation.

    The convolution has no bias because the BatchNorm that follows would cancel it.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: odd kernel size.
        stride: convolution stride (2 halves the map, rounding up).
        dilation: dilation of the kernel (context modules use 2, 4, 6, ...).
        groups: convolution groups.
        act_layer: activation constructor, or None for no activation.
        device, dtype: where to create parameters.

    Shape:
        x: (B, in_chs, H, W)  ->  (B, out_chs, ⌈H/stride⌉, ⌈W/stride⌉)
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act_layer: Callable[[], nn.Module] | None = nn.ReLU,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=dilation * (kernel_size // 2),
                              dilation=dilation, groups=groups, bias=False, **dd)
        self.bn = nn.BatchNorm2d(out_chs, **dd)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class FReLU(nn.Module):
    """Funnel activation (Ma et al., 2020): ``max(x, BN(dwconv3×3(x)))``.

    A ReLU whose threshold is a learned function of the 3×3 neighbourhood, so the shallow
    extractor's activations follow edges and textures of both modalities (used by MAFS's SFE).

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, channels: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.funnel = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False, **dd)
        self.bn = nn.BatchNorm2d(channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.bn(self.funnel(x)))


class DenseConvBlock(nn.Module):
    """Densely connected 3×3 conv layers at a constant width; returns the last layer's output.

    Layer ``i`` sees the block input and the outputs of all earlier layers (concatenated), the
    DenseNet pattern: full-resolution features keep fine detail from the input while deeper
    layers add context, without the width growing at the output.

    Args:
        channels: width C of the input, of every layer and of the output.
        num_layers: number of conv layers (≥ 1).
        device, dtype: where to create parameters.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, channels: int, num_layers: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(
            ConvBNAct(channels * (i + 1), channels, 3, device=device, dtype=dtype) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return feats[-1]
