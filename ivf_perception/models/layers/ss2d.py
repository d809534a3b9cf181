"""SS2D: VMamba's 2-D selective scan over a channels-last feature map.

Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024. The token map is projected to
an SSM input ``x`` and a gate ``z``; ``x`` goes through a depth-wise conv and SiLU, is read in
four scan orders (:func:`cross_scan`), each order gets its own input-dependent Δ/B/C and is
scanned with one grouped selective scan (four groups, one per order); the four outputs are
put back in image order and summed (:func:`cross_merge`), normalised, gated by ``silu(z)``
and projected back. Parameter names match VMamba's so its checkpoints map one to one.

Two options cover the other users of the layer:

- ``scan_order="window"`` reads the map window by window (LocalMamba's local scan,
  :func:`window_scan`), as CMFS's wavelet branch does;
- ``gated=False`` is VMamba's ``"v05_noz"`` forward (its "0230s" VMamba-T, CMFS's encoder):
  ``in_proj`` produces only ``d_inner`` channels and the output is not gated, so the
  checkpoint's ``in_proj.weight`` of shape ``(d_inner, d_model)`` loads as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.cross_scan import NUM_DIRECTIONS, cross_merge, cross_scan
from ivf_perception.models.layers.factories import factory_kwargs
from ivf_perception.models.layers.ssm_params import (
    DirectionalScan,
    add_direction_params,
    dt_rank_for,
    project_image_tokens,
    project_scan_params,
    reset_direction_params,
)
from ivf_perception.models.layers.window_scan import window_merge, window_scan
from ivf_perception.models.ops import SCAN_BACKENDS, cpu_scan_usable, cross_selective_scan, selective_scan

__all__ = ["SCAN_ORDERS", "SS2D", "check_scan_backend", "depthwise_conv"]

SCAN_ORDERS = ("cross", "window")
"""Accepted ``scan_order`` values: VMamba's cross scan, or LocalMamba's local-window scan."""


def depthwise_conv(channels: int, d_conv: int, bias: bool, device: torch.device | str | None,
                   dtype: torch.dtype | None) -> nn.Module:
    """The local mixing conv before the scan; ``d_conv <= 1`` disables it (identity).

    Raises:
        ValueError: for an even kernel size, which could not keep H×W unchanged.
    """
    if d_conv <= 1:
        return nn.Identity()
    if d_conv % 2 == 0:
        raise ValueError(f"d_conv must be odd so that the conv keeps H and W (or <= 1 to disable it), got {d_conv}")
    return nn.Conv2d(channels, channels, d_conv, padding=(d_conv - 1) // 2, groups=channels, bias=bias,
                     device=device, dtype=dtype)


def check_scan_backend(scan_backend: str) -> None:
    """Fail at construction, not at the first forward, on a misspelt backend."""
    if scan_backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown scan_backend {scan_backend!r}; supported backends: {list(SCAN_BACKENDS)}")


class SS2D(DirectionalScan):
    """VMamba's 2-D selective-scan mixer on channels-last input.

    Args:
        d_model: input/output channels C.
        d_state: SSM state size N.
        ssm_ratio: inner width ``d_inner = int(ssm_ratio * d_model)``.
        dt_rank: rank of Δ's projection; ``"auto"`` is ``ceil(d_model / 16)``.
        d_conv: depth-wise conv kernel size (odd); ``<= 1`` disables the conv.
        conv_bias: bias of the depth-wise conv.
        bias: bias of the input and output projections.
        dropout: dropout on the output.
        scan_backend: selective-scan backend, see :data:`~ivf_perception.models.ops.SCAN_BACKENDS`.
        scan_order: ``"cross"`` (:func:`cross_scan`) or ``"window"`` (:func:`window_scan`).
        window_size: side of the scan window of ``scan_order="window"``.
        gated: multiply the output by ``silu(z)`` from a second half of ``in_proj``; False is
            VMamba's ``"v05_noz"`` (``in_proj`` has ``d_inner`` outputs, no gate).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, H, W, C)  ->  (B, H, W, C), any H, W.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        scan_backend: str = "auto",
        scan_order: str = "cross",
        window_size: int = 4,
        gated: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_scan_backend(scan_backend)
        if scan_order not in SCAN_ORDERS:
            raise ValueError(f"Unknown scan_order {scan_order!r}; supported scan orders: {list(SCAN_ORDERS)}")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        dd = factory_kwargs(device, dtype)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        if self.d_inner < 1:
            raise ValueError(f"ssm_ratio * d_model must be >= 1, got {ssm_ratio} * {d_model}")
        self.dt_rank = dt_rank_for(d_model, dt_rank)
        self.scan_backend = scan_backend
        self.scan_order = scan_order
        self.window_size = window_size
        self.gated = bool(gated)
        k = NUM_DIRECTIONS

        self.in_proj = nn.Linear(d_model, (2 if self.gated else 1) * self.d_inner, bias=bias, **dd)
        self.conv2d = depthwise_conv(self.d_inner, d_conv, conv_bias, **dd)
        self.act = nn.SiLU()
        add_direction_params(self, k, self.d_inner, self.dt_rank, d_state, **dd)
        self.out_norm = nn.LayerNorm(self.d_inner, **dd)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation of the scan parameters (the nn layers init themselves)."""
        reset_direction_params(self, self.dt_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B H W C", name="x", C=self.d_model)
        x = self.in_proj(x)
        z = None
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d_inner, H, W)
        a_log = self.A_logs.to(torch.promote_types(self.A_logs.dtype, torch.float32))
        if (self.scan_order == "cross" and self.scan_backend in ("auto", "cpu")
                and cpu_scan_usable(x, a_log, state_size=self.d_state)):
            y = self._fused_cross_scan(x, -torch.exp(a_log))
        else:
            y = self._scan(x, -torch.exp(a_log))
        y = self.out_norm(y)
        if z is not None:
            y = y * F.silu(z)
        return self.dropout(self.out_proj(y))

    def _scan(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Scan orders materialised, grouped scan, merge: any device, autograd, ONNX.

        Shape:
            x: (B, d_inner, H, W)  ->  (B, H, W, d_inner)
        """
        b, _, h, w = x.shape
        window = self.scan_order == "window"
        xs = window_scan(x, self.window_size) if window else cross_scan(x)  # (B, 4, d_inner, L)
        delta, bs, cs = project_scan_params(xs, self.x_proj_weight, self.dt_projs_weight, self.dt_rank, self.d_state)
        ys = selective_scan(
            xs.flatten(1, 2), delta.flatten(1, 2), A, bs, cs, self.Ds,
            delta_bias=self.dt_projs_bias.flatten(), delta_softplus=True, backend=self.scan_backend,
        )
        ys = ys.view(b, NUM_DIRECTIONS, self.d_inner, h * w)
        y = window_merge(ys, h, w, self.window_size) if window else cross_merge(ys, h, w)
        return y.transpose(1, 2).reshape(b, h, w, self.d_inner)

    def _fused_cross_scan(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """The same cross scan by the fused CPU kernel, reading image-order tensors (no copies).

        Shape:
            x: (B, d_inner, H, W)  ->  (B, H, W, d_inner)
        """
        b, _, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, 1, h * w, self.d_inner)  # a view when x is channels last
        x_dbl = project_image_tokens(tokens, self.x_proj_weight)
        y = cross_selective_scan(tokens.transpose(2, 3), x_dbl, self.dt_projs_weight, A, self.Ds,
                                 self.dt_projs_bias.flatten(), True, h, w)
        return y.view(b, h, w, self.d_inner)

    def extra_repr(self) -> str:
        window = f", window_size={self.window_size}" if self.scan_order == "window" else ""
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}, "
                f"scan_order={self.scan_order!r}{window}, gated={self.gated}")
