"""Fixed-kernel Sobel gradients, function first and module second (kornia's ``filters/sobel.py``).

One implementation serves the fusion losses (gradient and texture terms) and CMFS's fusion head
(its gradient residual dense block), so a loss never measures edges differently from the way the
network extracts them.

Conventions, as kornia's ``spatial_gradient(mode="sobel")``:

* ``Gx`` is the cross-correlation with ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` (positive where
  intensity grows to the right) and ``Gy`` with its transpose (positive where it grows
  downwards).
* ``normalized=True`` divides both kernels by 8, the sum of their absolute values, so a unit step
  gives a response of 0.5 on each of the two pixels beside it, whatever the image's scale.
* The image is padded by one pixel before filtering; ``"replicate"`` (the default) repeats the
  border pixels, so a flat image has zero gradient everywhere, including the border, whereas zero
  padding would invent an edge all around a non-black image.

The kernel is not a parameter: CMFS's public code copies the Sobel weights into a trainable
``nn.Conv2d``, which lets training turn it into an arbitrary 3×3 filter; a fixed kernel keeps the
"gradient" branch a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape

__all__ = ["SOBEL_BORDERS", "Sobel", "sobel_gradients", "sobel_magnitude"]

SOBEL_BORDERS = ("replicate", "reflect", "zeros")
"""Accepted ``border`` values: how the image is extended by one pixel before filtering."""

_PAD_MODES = {"replicate": "replicate", "reflect": "reflect", "zeros": "constant"}


def _check_options(border: str) -> None:
    if border not in _PAD_MODES:
        raise ValueError(f"Unknown border {border!r}; supported borders: {list(SOBEL_BORDERS)}")


def _sobel_pair(image: torch.Tensor, normalized: bool, border: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``Gx`` and ``Gy`` of every channel, each (*, C, H, W), by the separable form of the kernel.

    ``Gx`` is the vertical [1, 2, 1] smoothing of the horizontal central difference, ``Gy`` the
    vertical central difference of the horizontal [1, 2, 1] smoothing: shifted views and adds
    instead of a 3×3 convolution over single-channel images, which oneDNN runs badly (CMFS small
    at 240×320, 8×1×258×322 input: 24 ms -> 1.4 ms on one thread). Equal to the convolution up to
    float summation order (dividing by 8 afterwards is exact).
    """
    check_shape(image, "* C H W", name="image")
    _check_options(border)
    if not image.is_floating_point():
        raise TypeError(f"image: expected a floating-point tensor, got {image.dtype}; convert it with .float()")
    *lead, h, w = image.shape
    p = F.pad(image.reshape(-1, 1, h, w), (1, 1, 1, 1), mode=_PAD_MODES[border])
    dx = p[..., 2:] - p[..., :-2]
    gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
    sy = p[..., :-2] + 2.0 * p[..., 1:-1] + p[..., 2:]
    gy = sy[..., 2:, :] - sy[..., :-2, :]
    if normalized:
        gx, gy = gx / 8.0, gy / 8.0
    return gx.reshape(*lead, h, w), gy.reshape(*lead, h, w)


def sobel_gradients(image: torch.Tensor, normalized: bool = True, border: str = "replicate") -> torch.Tensor:
    """Horizontal and vertical Sobel derivatives of every channel.

    Args:
        image: a floating-point image or feature map.
        normalized: divide the kernels by 8 (see the module docstring).
        border: one of :data:`SOBEL_BORDERS`; ``"reflect"`` needs H, W >= 2.

    Returns:
        The derivatives stacked on a new dimension before H: index 0 is ``Gx``, 1 is ``Gy``.

    Raises:
        ShapeError: when ``image`` has fewer than 3 dimensions.
        TypeError: for an integer image (the result needs negative values and fractions).
        ValueError: for an unknown ``border``.

    Shape:
        image: (*, C, H, W)  ->  (*, C, 2, H, W)

    Example:
        >>> sobel_gradients(torch.rand(2, 3, 5, 7)).shape
        torch.Size([2, 3, 2, 5, 7])
    """
    gx, gy = _sobel_pair(image, normalized, border)
    return torch.stack((gx, gy), dim=-3)


def sobel_magnitude(image: torch.Tensor, normalized: bool = True, border: str = "replicate") -> torch.Tensor:
    """L1 gradient magnitude ``|Gx| + |Gy|`` of every channel.

    The fusion literature (and CMFS's fusion head) uses the L1 form rather than kornia's
    Euclidean ``sqrt(Gx² + Gy²)``: it needs no epsilon to stay differentiable on flat regions
    and its value on a straight edge does not depend on rounding.

    Args:
        image: a floating-point image or feature map.
        normalized: divide the kernels by 8.
        border: one of :data:`SOBEL_BORDERS`.

    Shape:
        image: (*, C, H, W)  ->  (*, C, H, W), non-negative

    Example:
        >>> step = torch.zeros(1, 1, 3, 4)
        >>> step[..., 2:] = 1.0
        >>> sobel_magnitude(step)[0, 0, 0]
        tensor([0.0000, 0.5000, 0.5000, 0.0000])
    """
    gx, gy = _sobel_pair(image, normalized, border)
    return gx.abs() + gy.abs()


class Sobel(nn.Module):
    """Module form of :func:`sobel_magnitude`: stores the options, holds no parameters.

    Args:
        normalized: divide the kernels by 8.
        border: one of :data:`SOBEL_BORDERS`.

    Shape:
        image: (*, C, H, W)  ->  (*, C, H, W), non-negative
    """

    def __init__(self, normalized: bool = True, border: str = "replicate") -> None:
        super().__init__()
        _check_options(border)
        self.normalized = normalized
        self.border = border

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sobel_magnitude(image, normalized=self.normalized, border=self.border)

    def extra_repr(self) -> str:
        return f"normalized={self.normalized}, border={self.border!r}"
