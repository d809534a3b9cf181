"""Bidirectional Mamba mixer over a 1-D token sequence (Vision Mamba's "v2" bidirectional block).

Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
Space Model", ICML 2024. A causal Mamba mixer sees each token only after the ones before it;
running a second, independently parameterised mixer over the reversed sequence and averaging
the two outputs gives every token context from both sides. CMFS uses it (d_state 16) on the
flattened, channel-shuffled features of each modality in its MIA module.

Both directions share the input and output projections and differ in their causal conv, Δ/B/C
projections, A and D (as in Vision Mamba). The two scans run as one grouped selective scan
(two groups), the same layout :class:`~ivf_perception.models.layers.SS2D` uses for its four
directions, so every selective-scan backend (chunked PyTorch, reference, mamba-ssm CUDA) applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.factories import factory_kwargs
from ivf_perception.models.layers.ss2d import check_scan_backend
from ivf_perception.models.layers.ssm_params import (
    DirectionalScan,
    add_direction_params,
    dt_rank_for,
    project_scan_params,
    reset_direction_params,
)
from ivf_perception.models.ops import selective_scan

__all__ = ["BidirectionalMamba"]

_DIRECTIONS = 2  # forward and reversed


class BidirectionalMamba(DirectionalScan):
    """Mamba mixer run forwards and backwards over the sequence, outputs averaged.

    Args:
        d_model: token channels C.
        d_state: SSM state size N.
        expand: inner width ``d_inner = int(expand * d_model)``.
        d_conv: kernel of the causal depth-wise conv (Mamba's default 4).
        dt_rank: rank of Δ's projection; ``"auto"`` is ``ceil(d_model / 16)``.
        bias: bias of the input and output projections.
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, L, C)  ->  (B, L, C), any L.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: float = 2.0,
        d_conv: int = 4,
        dt_rank: int | str = "auto",
        bias: bool = False,
        scan_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_scan_backend(scan_backend)
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        dd = factory_kwargs(device, dtype)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1:
            raise ValueError(f"expand * d_model must be >= 1, got {expand} * {d_model}")
        self.dt_rank = dt_rank_for(d_model, dt_rank)
        self.scan_backend = scan_backend
        k = _DIRECTIONS

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **dd)
        # Causal convs: padded on both sides by d_conv - 1, the tail is cut in forward().
        self.conv1d_fwd = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner, **dd)
        self.conv1d_bwd = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner, **dd)
        add_direction_params(self, k, self.d_inner, self.dt_rank, d_state, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation of the scan parameters (the nn layers init themselves)."""
        reset_direction_params(self, self.dt_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B L C", name="x", C=self.d_model)
        b, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2·d_inner, L)
        u, z = xz.chunk(2, dim=1)
        u_fwd = F.silu(self.conv1d_fwd(u)[..., :length])
        u_bwd = F.silu(self.conv1d_bwd(u.flip(-1))[..., :length])
        us = torch.stack((u_fwd, u_bwd), dim=1)  # (B, 2, d_inner, L)
        zs = torch.stack((z, z.flip(-1)), dim=1)
        delta, bs, cs = project_scan_params(us, self.x_proj_weight, self.dt_projs_weight, self.dt_rank, self.d_state)
        a_log = self.A_logs.to(torch.promote_types(self.A_logs.dtype, torch.float32))
        ys = selective_scan(
            us.flatten(1, 2), delta.flatten(1, 2), -torch.exp(a_log), bs, cs, self.Ds, z=zs.flatten(1, 2),
            delta_bias=self.dt_projs_bias.flatten(), delta_softplus=True, backend=self.scan_backend,
        ).view(b, _DIRECTIONS, self.d_inner, length)
        y = 0.5 * (ys[:, 0] + ys[:, 1].flip(-1))  # put the backward pass back in sequence order
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}")
