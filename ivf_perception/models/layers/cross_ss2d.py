"""Cross SS2D: S4Fusion's cross-modal selective scan over interleaved infrared/visible tokens.

Ma et al., "S4Fusion: Saliency-aware Selective State Space Model for Infrared and Visible
Image Fusion", 2024 (arXiv:2405.20881); public code ``zipper112/S4Fusion``. Written from
the paper and that code's behaviour; parameter names match its checkpoints.

The idea: scan both modalities *in one sequence* so a single hidden state carries
information across them, while each token's Δ, B and C still come from its own modality.
Steps (``x`` = infrared tokens, ``y`` = visible tokens, both (B, H, W, C)):

1. Shared input projection to an SSM input and a gate ``z`` per modality, shared depth-wise
   conv + SiLU.
2. Four scan orders of each modality (:func:`cross_scan`).
3. Modality-specific Δ/B/C: ``x_proj_weight`` for infrared tokens and ``y_proj_weight`` for
   visible tokens (one projection per direction each); the Δ up-projection is shared, as
   in the public code. They are computed from the unmarked tokens.
4. Patch Mark: a learned linear map of the concatenated tokens (2·d_inner -> d_inner),
   ``mark = W [x; y]``, is added to both modalities' SSM inputs, so each token carries a
   tag of what the other modality sees at the same place. It is per token, so it is
   computed once on the feature map and read in the four orders.
5. Interleaving: per direction, ``x0, y0, x1, y1, ...`` (length 2L), with the matching
   Δ/B/C interleaved the same way.
6. One grouped selective scan (4 groups = 4 directions) over the interleaved sequences:
   one hidden state shared by both modalities, shared A, D and Δ bias.
7. Recovering: even positions are infrared outputs, odd positions visible ones; each is put
   back in image order (:func:`cross_merge`, sum of the directions).
8. Shared LayerNorm, gate each modality by ``silu`` of its own ``z``, shared output
   projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.cross_scan import NUM_DIRECTIONS, cross_merge, cross_scan
from ivf_perception.models.layers.factories import factory_kwargs
from ivf_perception.models.layers.ss2d import check_scan_backend, depthwise_conv
from ivf_perception.models.layers.ssm_params import (
    DirectionalScan,
    add_direction_params,
    dt_rank_for,
    init_proj_weight,
    project_image_tokens,
    project_scan_params,
    reset_direction_params,
)
from ivf_perception.models.ops import cpu_scan_usable, cross_selective_scan, selective_scan

__all__ = ["CrossSS2D", "interleave"]


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a0, b0, a1, b1, ...`` along the last dimension.

    Shape:
        a, b: (*, L)  ->  (*, 2L)
    """
    return torch.stack([a, b], dim=-1).flatten(-2)


class CrossSS2D(DirectionalScan):
    """S4Fusion's Cross SS2D: a shared-state selective scan over interleaved modalities.

    Args:
        d_model: channels C of both inputs and outputs.
        d_state: SSM state size N (S4Fusion's fusion blocks use 18).
        ssm_ratio: inner width ``d_inner = int(ssm_ratio * d_model)`` (S4Fusion: 1.5).
        dt_rank: rank of Δ's projection; ``"auto"`` is ``ceil(d_model / 16)``.
        d_conv: depth-wise conv kernel size (odd); ``<= 1`` disables the conv.
        dropout: dropout on the outputs.
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x (infrared), y (visible): (B, H, W, C)  ->  (out_x, out_y), both (B, H, W, C).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 18,
        ssm_ratio: float = 1.5,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        dropout: float = 0.0,
        scan_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_scan_backend(scan_backend)
        dd = factory_kwargs(device, dtype)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        if self.d_inner < 1:
            raise ValueError(f"ssm_ratio * d_model must be >= 1, got {ssm_ratio} * {d_model}")
        self.dt_rank = dt_rank_for(d_model, dt_rank)
        self.scan_backend = scan_backend
        k, n_proj = NUM_DIRECTIONS, self.dt_rank + 2 * d_state

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False, **dd)
        self.conv2d = depthwise_conv(self.d_inner, d_conv, True, **dd)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(k, n_proj, self.d_inner, **dd))  # infrared
        self.y_proj_weight = nn.Parameter(torch.empty(k, n_proj, self.d_inner, **dd))  # visible
        add_direction_params(self, k, self.d_inner, self.dt_rank, d_state, with_x_proj=False, **dd)
        self.mark_proj = nn.Parameter(torch.empty(self.d_inner, 2 * self.d_inner, **dd))
        self.out_norm = nn.LayerNorm(self.d_inner, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **dd)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation of the scan parameters; ``nn.Linear``'s for the mark."""
        reset_direction_params(self, self.dt_rank)
        init_proj_weight(self.y_proj_weight)
        init_proj_weight(self.mark_proj)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x, "B H W C", name="x", C=self.d_model)
        b, h, w, _ = x.shape
        check_shape(y, "B H W C", name="y", B=b, H=h, W=w, C=self.d_model)

        x, z_x = self.in_proj(x).chunk(2, dim=-1)
        y, z_y = self.in_proj(y).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d_inner, H, W)
        y = self.act(self.conv2d(y.permute(0, 3, 1, 2)))
        mark = torch.einsum("bchw,dc->bdhw", torch.cat([x, y], dim=1), self.mark_proj)  # Patch Mark
        a_log = self.A_logs.to(torch.promote_types(self.A_logs.dtype, torch.float32))
        if self.scan_backend in ("auto", "cpu") and cpu_scan_usable(x, y, a_log, state_size=self.d_state):
            out_x, out_y = self._fused_scan(x, y, mark, -torch.exp(a_log))
        else:
            out_x, out_y = self._scan(x, y, mark, -torch.exp(a_log))
        return self._gate_and_project(out_x, z_x), self._gate_and_project(out_y, z_y)

    def _scan(self, x: torch.Tensor, y: torch.Tensor, mark: torch.Tensor,
              A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-7 with the scan orders and the interleaving materialised: any device,
        autograd, ONNX.

        Shape:
            x, y, mark: (B, d_inner, H, W)  ->  two (B, H, W, d_inner)
        """
        b, _, h, w = x.shape
        xs, ys, marks = cross_scan(x), cross_scan(y), cross_scan(mark)  # (B, 4, d_inner, L)
        dt_x, b_x, c_x = project_scan_params(xs, self.x_proj_weight, self.dt_projs_weight, self.dt_rank, self.d_state)
        dt_y, b_y, c_y = project_scan_params(ys, self.y_proj_weight, self.dt_projs_weight, self.dt_rank, self.d_state)
        u = interleave(xs + marks, ys + marks).flatten(1, 2)  # (B, 4·d_inner, 2L)
        out = selective_scan(
            u, interleave(dt_x, dt_y).flatten(1, 2), A, interleave(b_x, b_y), interleave(c_x, c_y),
            self.Ds, delta_bias=self.dt_projs_bias.flatten(), delta_softplus=True, backend=self.scan_backend,
        )
        out = out.view(b, NUM_DIRECTIONS, self.d_inner, h * w, 2)  # Recovering: even = x, odd = y
        out_x, out_y = (cross_merge(out[..., m], h, w).transpose(1, 2).reshape(b, h, w, self.d_inner) for m in (0, 1))
        return out_x, out_y

    def _fused_scan(self, x: torch.Tensor, y: torch.Tensor, mark: torch.Tensor,
                    A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-7 by the fused CPU kernel from image-order tensors: no reordered or
        interleaved copies (modalities are the kernel's M = 2 interleaved inputs).

        Shape:
            x, y, mark: (B, d_inner, H, W)  ->  two (B, H, W, d_inner)
        """
        b, _, h, w = x.shape
        tokens = torch.stack([x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)], dim=1).view(b, 2, h * w, self.d_inner)
        weight = torch.stack([self.x_proj_weight, self.y_proj_weight])  # (2, K, R + 2N, d_inner)
        x_dbl = project_image_tokens(tokens, weight)  # from the unmarked tokens
        u = tokens + mark.permute(0, 2, 3, 1).reshape(b, 1, h * w, self.d_inner)
        out = cross_selective_scan(u.transpose(2, 3), x_dbl, self.dt_projs_weight, A, self.Ds,
                                   self.dt_projs_bias.flatten(), True, h, w)
        return out[:, 0].view(b, h, w, self.d_inner), out[:, 1].view(b, h, w, self.d_inner)

    def _gate_and_project(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, H, W, d_inner) scan output -> (B, H, W, C): norm, ``silu(z)`` gate, projection."""
        return self.dropout(self.out_proj(self.out_norm(tokens) * F.silu(z)))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}")
