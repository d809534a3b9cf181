"""Four-direction scan orders of a 2-D feature map (VMamba's cross scan) and their inverse.

A 1-D selective scan sees each token only after the ones before it. Scanning an image in
four orders (row-major, column-major and both reversed) lets every token gather context
from every direction; the four outputs are then put back in image order and summed.
Pure tensor permutations, so they run on any device, export to ONNX and take any H, W.
"""

from __future__ import annotations

import torch

from ivf_perception.checks import ShapeError, check_shape, checks_enabled

__all__ = ["cross_scan", "cross_merge", "NUM_DIRECTIONS"]

NUM_DIRECTIONS = 4
"""Scan orders produced by :func:`cross_scan`: row-major, column-major, and both reversed."""


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Flatten a feature map in the four scan orders.

    Direction 0 reads rows left to right, top to bottom; direction 1 reads columns top to
    bottom, left to right; directions 2 and 3 are 0 and 1 reversed.

    Args:
        x: feature map.

    Returns:
        The four sequences, stacked on dimension 1.

    Shape:
        x: (B, C, H, W)  ->  (B, 4, C, H*W)

    Example:
        >>> cross_scan(torch.arange(6.).view(1, 1, 2, 3))[0, :, 0]
        tensor([[0., 1., 2., 3., 4., 5.],
                [0., 3., 1., 4., 2., 5.],
                [5., 4., 3., 2., 1., 0.],
                [5., 2., 4., 1., 3., 0.]])
    """
    check_shape(x, "B C H W", name="x")
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    forward = torch.stack([rows, cols], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Undo each scan order of :func:`cross_scan` and sum the four directions.

    ``cross_merge(cross_scan(x), H, W) == 4 * x.flatten(2)``.

    Args:
        y: the four sequences (outputs of a scan over ``cross_scan``'s orders).
        H: feature-map height.
        W: feature-map width.

    Returns:
        The sum, in row-major (image) order.

    Shape:
        y: (B, 4, C, H*W)  ->  (B, C, H*W)
    """
    check_shape(y, "B 4 C L", name="y")
    if checks_enabled() and y.shape[-1] != H * W:
        raise ShapeError(f"y: expected L = H*W = {H}*{W} = {H * W} tokens, got shape {tuple(y.shape)}")
    forward = y[:, :2] + y[:, 2:].flip(-1)  # undo the reversal: (B, 2, C, L)
    rows, cols = forward.unbind(1)
    b, c = rows.shape[:2]
    return rows + cols.reshape(b, c, W, H).transpose(2, 3).reshape(b, c, H * W)
