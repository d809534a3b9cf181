"""Parameters of multi-direction selective-scan layers: Mamba's initialisers and projection.

Shared by :class:`SS2D` and :class:`CrossSS2D`. Each of the ``K`` scan directions owns a
low-rank projection of the tokens to (Δ, B, C) and a Δ up-projection with a bias; all
directions' channels are stacked (``K·d_inner``) for one grouped selective scan.

Initialisation follows Mamba (Gu & Dao, 2023): Δ's bias is the inverse softplus of a
log-uniform sample in ``[dt_min, dt_max]`` so softplus(bias) starts as a sensible step
size, the Δ projection weight is uniform with std ``dt_rank**-0.5``, and A is S4D-real
(``A[:, n] = -(n + 1)``, stored as ``A_log = log(n + 1)`` so that A stays negative).
``A_log`` and ``D`` are flagged ``_no_weight_decay`` for the optimiser's parameter groups.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ivf_perception.models.layers.factories import factory_kwargs

__all__ = [
    "dt_rank_for",
    "init_dt_bias",
    "init_dt_weight",
    "init_proj_weight",
    "init_a_log",
    "no_weight_decay",
    "project_scan_params",
    "project_image_tokens",
    "DirectionalScan",
    "add_direction_params",
    "reset_direction_params",
]


def dt_rank_for(d_model: int, dt_rank: int | str) -> int:
    """Mamba's ``dt_rank="auto"``: ``ceil(d_model / 16)``; an int is returned as is."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, int) and dt_rank >= 1:
        return dt_rank
    raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")


@torch.no_grad()
def init_dt_bias(bias: torch.Tensor, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
    """In place: ``bias = softplus⁻¹(dt)`` with ``dt`` log-uniform in [dt_min, dt_max]."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand_like(bias) * (log_max - log_min) + log_min).clamp_(min=dt_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus(x) = log(1 + e^x)


@torch.no_grad()
def init_dt_weight(weight: torch.Tensor, dt_rank: int, dt_scale: float = 1.0) -> None:
    """In place: uniform in ±``dt_rank**-0.5 * dt_scale`` (keeps Δ's variance at init)."""
    std = dt_rank**-0.5 * dt_scale
    weight.uniform_(-std, std)


@torch.no_grad()
def init_proj_weight(weight: torch.Tensor) -> None:
    """In place: ``nn.Linear``'s default, uniform in ±1/sqrt(fan_in), for stacked (K, out, in)."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    weight.uniform_(-bound, bound)


@torch.no_grad()
def init_a_log(a_log: torch.Tensor) -> None:
    """In place: S4D-real ``A_log[:, n] = log(n + 1)`` for a (channels, N) tensor."""
    n = torch.arange(1, a_log.shape[-1] + 1, device=a_log.device, dtype=a_log.dtype)
    a_log.copy_(torch.log(n).expand_as(a_log))


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag ``param`` so the optimiser's parameter groups exclude it from weight decay."""
    param._no_weight_decay = True  # type: ignore[attr-defined]
    return param


def project_scan_params(
    xs: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, dt_rank: int, d_state: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input-dependent Δ (before bias/softplus), B and C of every direction.

    Args:
        xs: tokens of each direction.
        x_proj_weight: per-direction projection to ``dt_rank + 2·d_state``.
        dt_projs_weight: per-direction up-projection of Δ's low-rank part.
        dt_rank: rank of Δ's projection.
        d_state: SSM state size N.

    Shape:
        xs: (B, K, D, L); x_proj_weight: (K, R + 2N, D); dt_projs_weight: (K, D, R)
        ->  delta: (B, K, D, L); B, C: (B, K, N, L)
    """
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)
    dts, b, c = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=2)
    return torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight), b, c


def project_image_tokens(tokens: torch.Tensor, x_proj_weight: torch.Tensor) -> torch.Tensor:
    """Every direction's token projection (Δ's low-rank part, B, C) from image-order tokens.

    The projection is per token, so projecting the image-order tokens once gives each
    direction's values at image positions, without reading the tokens in the four orders;
    the fused cross scan indexes them in each direction's order. Computed channels last, so
    that one position's ``R + 2N`` values are contiguous for the kernel.

    Shape:
        tokens: (B, M, L, D) channels last; x_proj_weight: (M, K, R + 2N, D) (or (K, R + 2N, D)
        for M = 1)  ->  (B, M, K, R + 2N, L), a view
    """
    bsz, mods, length, dim = tokens.shape
    directions, rows = x_proj_weight.shape[-3], x_proj_weight.shape[-2]
    weight = x_proj_weight.reshape(mods, directions * rows, dim).transpose(1, 2)  # (M, D, K·(R + 2N))
    x_dbl = torch.matmul(tokens, weight).view(bsz, mods, length, directions, rows)
    return x_dbl.permute(0, 1, 3, 4, 2)


class DirectionalScan(nn.Module):
    """Base of the multi-direction mixers: declares what :func:`add_direction_params` registers.

    The parameters are created by that function, not in a class body, so without these
    declarations a type checker only sees ``nn.Module.__getattr__`` (``Tensor | Module``).
    """

    x_proj_weight: nn.Parameter
    dt_projs_weight: nn.Parameter
    dt_projs_bias: nn.Parameter
    A_logs: nn.Parameter
    Ds: nn.Parameter


def add_direction_params(module: DirectionalScan, directions: int, d_inner: int, dt_rank: int, d_state: int,
                         with_x_proj: bool = True, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> None:
    """Register the stacked per-direction scan parameters on ``module`` under VMamba's names.

    ``x_proj_weight`` (K, R + 2N, D), ``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D),
    ``A_logs`` (K·D, N) and ``Ds`` (K·D,), the last two flagged for no weight decay: every
    multi-direction mixer (SS2D, Cross SS2D, bidirectional Mamba) shares this layout, so each
    runs all its directions as one grouped selective scan and VMamba checkpoints map by name.
    ``with_x_proj=False`` leaves the input projection to mixers that project differently.
    """
    dd = factory_kwargs(device, dtype)
    if with_x_proj:
        module.x_proj_weight = nn.Parameter(torch.empty(directions, dt_rank + 2 * d_state, d_inner, **dd))
    module.dt_projs_weight = nn.Parameter(torch.empty(directions, d_inner, dt_rank, **dd))
    module.dt_projs_bias = nn.Parameter(torch.empty(directions, d_inner, **dd))
    module.A_logs = no_weight_decay(nn.Parameter(torch.empty(directions * d_inner, d_state, **dd)))
    module.Ds = no_weight_decay(nn.Parameter(torch.empty(directions * d_inner, **dd)))


def reset_direction_params(module: DirectionalScan, dt_rank: int) -> None:
    """Mamba's initialisation of the parameters of :func:`add_direction_params`."""
    init_proj_weight(module.x_proj_weight)
    init_dt_weight(module.dt_projs_weight, dt_rank)
    init_dt_bias(module.dt_projs_bias)
    init_a_log(module.A_logs)
    with torch.no_grad():
        module.Ds.fill_(1.0)
