"""GAM, Geometric Affine Modulation (paper eqs. 2–3; released ``GeometricResidualBlock``).

Each modality's half of the pruned feature is modulated by an affine transform predicted from
that modality's own patch embedding: ``[γ, β] = Conv1×1(ReLU(Conv1×1(GAP(E_M))))`` and
``F = Fuse·(1 + γ) + β``, so the shared pre-fused feature gets modality-specific statistics back.
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs

__all__ = ["GAM"]


class GAM(nn.Module):
    """``fused · (1 + γ) + β`` with γ, β from the global average of ``source``.

    Shape:
        fused, source: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, channels: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.affine = nn.Sequential(nn.Conv2d(channels, channels, 1, **dd), nn.ReLU(),
                                    nn.Conv2d(channels, 2 * channels, 1, **dd))

    def modulation(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """γ, β (B, C, 1, 1)."""
        gamma, beta = self.affine(source.mean(dim=(2, 3), keepdim=True)).chunk(2, dim=1)
        return gamma, beta

    def forward(self, fused: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(source)
        return fused * (1 + gamma) + beta
