"""VSS block: VMamba's residual block around :class:`SS2D`, channels-last.

``x + drop_path(SS2D(norm(x)))``, followed, when ``mlp_ratio > 0``, by a transformer-style
feed-forward branch ``x + drop_path(Mlp(norm2(x)))`` (VMamba v2+ uses one; v0, S4Fusion and
CMFS's "0230s" encoder do not). Submodule names match VMamba's checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ivf_perception.models.layers.drop_path import DropPath
from ivf_perception.models.layers.factories import NormFactory, factory_kwargs, get_norm_layer
from ivf_perception.models.layers.mlp import Mlp
from ivf_perception.models.layers.ss2d import SS2D

__all__ = ["VSSBlock"]


class VSSBlock(nn.Module):
    """Pre-norm residual SS2D block with an optional MLP branch.

    Args:
        dim: channels C.
        d_state: SSM state size N.
        ssm_ratio: SS2D inner width relative to ``dim``.
        mlp_ratio: hidden width of the MLP branch relative to ``dim``; 0 disables it.
        drop_path: stochastic-depth probability of each residual branch.
        norm_layer: name or constructor of the (last-dimension) norm, see :func:`get_norm_layer`.
        scan_backend: selective-scan backend.
        ssm_kwargs: further :class:`SS2D` options (e.g. VMamba-T's ``conv_bias=False,
            gated=False``), so one block serves every VMamba flavour.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, H, W, C)  ->  (B, H, W, C), any H, W.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: str | NormFactory | None = "layernorm",
        scan_backend: str = "auto",
        ssm_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        norm = get_norm_layer(norm_layer)
        self.norm = norm(dim, **dd)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend, **(ssm_kwargs or {}), **dd)
        self.drop_path = DropPath(drop_path)
        self.norm2: nn.Module | None = None
        self.mlp: Mlp | None = None
        if mlp_ratio > 0:
            self.norm2 = norm(dim, **dd)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None and self.norm2 is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
