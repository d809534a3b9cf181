"""Checks and resizing for the multi-scale feature lists that decoder heads read.

A head receives one map per encoder stage, finest first; these helpers give every head the
same actionable errors (which stage, which channel count) and the same upsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ivf_perception.checks import check_shape

__all__ = ["check_feature_dims", "check_feature_maps", "resize_to"]


def check_feature_dims(in_dims: Sequence[int]) -> tuple[int, ...]:
    """``in_dims`` as a tuple; raises ValueError unless it is a non-empty list of positive ints."""
    dims = tuple(in_dims)
    if not dims or any(not isinstance(c, int) or c < 1 for c in dims):
        raise ValueError(f"in_dims must be a non-empty sequence of positive ints, got {dims!r}")
    return dims


def check_feature_maps(feats: Sequence[torch.Tensor], in_dims: tuple[int, ...], name: str,
                       batch: int | None) -> None:
    """One (B, C_i, H_i, W_i) map per stage, with the documented channels and one batch size."""
    if len(feats) != len(in_dims):
        raise ValueError(f"{name}: expected {len(in_dims)} feature maps (one per entry of in_dims={list(in_dims)}), "
                         f"got {len(feats)}")
    for i, (f, c) in enumerate(zip(feats, in_dims)):
        sizes = {"C": c} if batch is None else {"B": batch, "C": c}
        check_shape(f, "B C H W", name=f"{name}[{i}]", **sizes)
        batch = f.shape[0]


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, skipped when the size already matches (an exact no-op, and cheaper)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
