"""ShuffleNet's channel shuffle: interleave the channels of equal groups.

CMFS shuffles each modality's channels before its bidirectional Mamba (MIA) and inside its
MoE blocks (MMFE) so that information crosses channel groups without extra parameters.
"""

from __future__ import annotations

import torch

from ivf_perception.checks import check_shape

__all__ = ["channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups.

    Raises:
        ValueError: when C is not divisible by ``groups``.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)

    Example:
        >>> channel_shuffle(torch.arange(6.).view(1, 6, 1, 1)).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    check_shape(x, "B C H W", name="x")
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: C={c} is not divisible by groups={groups}")
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
