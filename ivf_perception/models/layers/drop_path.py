"""Stochastic depth (Huang et al., 2016): drop a residual branch for whole samples.

Function first (``drop_path``), module second (``DropPath``), kornia style. During training
each sample's branch output is zeroed with probability ``drop_prob`` and the survivors are
scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged; in eval it is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["drop_path", "DropPath"]


def drop_path(
    x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True
) -> torch.Tensor:
    """Zero the whole of ``x[i]`` for random samples ``i`` (only when ``training``).

    Args:
        x: a residual branch's output, batch first.
        drop_prob: probability of dropping a sample's branch.
        training: identity unless True.
        scale_by_keep: divide kept samples by ``1 - drop_prob``.

    Shape:
        x: (B, *)  ->  (B, *)
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if scale_by_keep and keep > 0.0:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; follows ``self.training``.

    Args:
        drop_prob: probability of dropping a sample's branch, in [0, 1].
        scale_by_keep: divide kept samples by ``1 - drop_prob``.

    Shape:
        x: (B, *)  ->  (B, *)
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"
