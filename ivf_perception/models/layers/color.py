"""BT.601 colour conversions on tensors (full range, as JPEG and the fusion literature use).

Fusion networks that output one luminance channel get their colour back by recombining the
fused Y with the visible image's Cb/Cr; losses compare luminance. Function-first like kornia:
shape-checked, any leading dimensions, dtype preserved.
"""

from __future__ import annotations

import torch

from ivf_perception.checks import check_shape

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb", "rgb_to_gray", "BT601_LUMA"]

BT601_LUMA = (0.299, 0.587, 0.114)
_DELTA = 0.5  # chroma offset for images in [0, 1]


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """Luminance Y of an RGB image.

    Shape:
        rgb: (*, 3, H, W) in [0, 1]  ->  (*, 1, H, W)
    """
    check_shape(rgb, "* 3 H W", name="rgb")
    r, g, b = rgb.unbind(-3)
    return (BT601_LUMA[0] * r + BT601_LUMA[1] * g + BT601_LUMA[2] * b).unsqueeze(-3)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """RGB to YCbCr (BT.601 full range, chroma centred at 0.5).

    Shape:
        rgb: (*, 3, H, W) in [0, 1]  ->  (*, 3, H, W) with Y, Cb, Cr in [0, 1]
    """
    check_shape(rgb, "* 3 H W", name="rgb")
    r, g, b = rgb.unbind(-3)
    y = BT601_LUMA[0] * r + BT601_LUMA[1] * g + BT601_LUMA[2] * b
    cb = (b - y) * 0.564 + _DELTA
    cr = (r - y) * 0.713 + _DELTA
    return torch.stack((y, cb, cr), dim=-3)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """YCbCr (as produced by :func:`rgb_to_ycbcr`) back to RGB, not clamped.

    Shape:
        ycbcr: (*, 3, H, W)  ->  (*, 3, H, W)
    """
    check_shape(ycbcr, "* 3 H W", name="ycbcr")
    y, cb, cr = ycbcr.unbind(-3)
    cb = cb - _DELTA
    cr = cr - _DELTA
    r = y + 1.403 * cr
    g = y - 0.714 * cr - 0.344 * cb
    b = y + 1.773 * cb
    return torch.stack((r, g, b), dim=-3)
