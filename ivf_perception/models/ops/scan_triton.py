"""Forward selective scan as a Triton kernel: the CUDA path when mamba-ssm is not installed.

Why: mamba-ssm only ships as a source build that needs minutes of ``nvcc`` and a matching
toolkit, so most GPU machines run our chunked PyTorch form, which launches ``2T + L/T``
small kernels per call. Triton compiles one kernel at first use from a plain ``pip install
triton`` (it comes with CUDA builds of torch).

Algorithm (the recurrence of :func:`~ivf_perception.models.ops.selective_scan.selective_scan_ref`):
one program per batch element and block of ``BLOCK_D`` channels holds the state
``h`` (``BLOCK_D × N``) in registers and walks the sequence once, in tiles of ``BLOCK_T``
steps. Per tile it loads u, Δ, z (``BLOCK_D × BLOCK_T``) and B, C (``N × BLOCK_T`` per
channel's group) contiguously along time, composes the tile's steps ``h ↦ exp(Δ_t A) h +
Δ_t u_t B_t`` with a log-depth ``tl.associative_scan``, applies the result to the carried
state and reduces ``y_t = C_t · h_t``. A step-by-step loop would instead issue one dependent,
strided load per time step (tens of thousands per image). The work is O(B·D·N·L) with no
(B, D, N, L) tensor in memory and every operand read once; programs (batch × channel blocks)
run in parallel. Like the chunked form it only exponentiates ``Δ A <= 0`` and multiplies
decays, so long sequences and strong decay cannot overflow. Δ's bias and softplus (PyTorch's threshold
of 20), the ``D`` skip and the ``silu(z)`` gate are fused in. Grouped B/C are read per
channel from group ``d // (D // G)``. Everything is computed in float32 whatever the input
dtype; ``y`` is stored in ``u``'s dtype and the last state in float32, as the other paths do.

Forward only: there is no backward kernel. :func:`selective_scan_triton` refuses inputs
that require gradients, and the dispatcher sends training to the chunked form (whose
backward is hand-written), so the Triton path serves inference.

This module imports ``triton`` at module level; import it lazily (``ops/_backend.py`` does)
so that a machine without Triton still imports every model.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["selective_scan_triton", "triton_interpreting"]

_BLOCK_D = 4
_BLOCK_T = 32
"""Channels per program and time steps per tile. A tile holds BLOCK_D × N_pad × BLOCK_T float32
values per intermediate (2048 for N <= 16), which 4 warps keep in registers; few channels per
program also give a 480×640 image's scans (D = 4·C channels) hundreds of programs to spread."""


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its NumPy interpreter (``TRITON_INTERPRET=1``), which
    takes CPU tensors; the CPU tests use it to check the kernel without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    """Compose two affine steps h -> a h + b (left first): the scan's associative operator."""
    return a_left * a_right, b_left * a_right + b_right


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    dim, length, n_state, n_groups, per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One program: batch element ``program_id(0)``, channels ``program_id(1) * BLOCK_D + …``.

    Layouts (contiguous): u, delta, z, y (B, D, L); A (D, N); B, C (B, G, N, L); D, bias (D,);
    last (B, D, N) float32. Time advances in tiles of ``BLOCK_T`` steps.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < n_state)[None, :]

    # Padded channels and states read A = 0, B = C = 0: their state stays 0 and is never stored.
    a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(dskip_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    row = (pid_b * dim + offs_d) * length  # start of each channel's sequence in u/delta/z/y
    group = tl.minimum(offs_d // per_group, n_groups - 1)  # clamp keeps padded lanes in bounds
    bc_row = ((pid_b * n_groups + group)[:, None] * n_state + offs_n[None, :]) * length

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + offs_t
        mask_dt = mask_d[:, None] & (t < length)[None, :]
        ptr_dt = row[:, None] + t[None, :]
        u = tl.load(u_ptr + ptr_dt, mask=mask_dt, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + ptr_dt, mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            # torch.nn.functional.softplus with threshold 20: linear above it, no exp overflow
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))), dt)
        dt = tl.where(mask_dt, dt, 0.0)  # steps past the end: decay 1, drive 0, the state carries over
        mask_dnt = mask_dn[:, :, None] & (t < length)[None, None, :]
        ptr_bc = bc_row[:, :, None] + t[None, None, :]
        b_t = tl.load(b_ptr + ptr_bc, mask=mask_dnt, other=0.0).to(tl.float32)
        c_t = tl.load(c_ptr + ptr_bc, mask=mask_dnt, other=0.0).to(tl.float32)
        decay = tl.exp(dt[:, None, :] * a[:, :, None])  # (D, N, T)
        drive = (dt * u)[:, None, :] * b_t
        # The tile's steps composed in parallel (a log-depth scan), then applied to the carried state.
        decay_acc, drive_acc = tl.associative_scan((decay, drive), axis=2, combine_fn=_combine)
        states = decay_acc * h[:, :, None] + drive_acc
        y = tl.sum(states * c_t, axis=1)  # (D, T)
        h = tl.sum(tl.where((offs_t == BLOCK_T - 1)[None, None, :], states, 0.0), axis=2)
        if HAS_D:
            y = y + d_skip[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + ptr_dt, mask=mask_dt, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + ptr_dt, y.to(y_ptr.dtype.element_ty), mask=mask_dt)

    last_offs = (pid_b * dim + offs_d)[:, None] * n_state + offs_n[None, :]
    tl.store(last_ptr + last_offs, h, mask=mask_dn)


_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The selective scan's forward pass in one Triton kernel launch.

    Operands are checked by the caller (:func:`~ivf_perception.models.ops.selective_scan.selective_scan`
    with ``backend="triton"``); this function only enforces what the kernel itself needs.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in
            :func:`~ivf_perception.models.ops.selective_scan.selective_scan_ref`.

    Returns:
        ``y`` in ``u``'s dtype, or ``(y, last_state)`` with the state in float32.

    Raises:
        RuntimeError: a dtype the kernel does not take (float64), inputs that require
            gradients (no backward kernel), or CPU tensors outside Triton's interpreter.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L) with D % G == 0;
        D, delta_bias: (D,)  ->  y: (B, D, L); last_state: (B, D, N)
    """
    if u.dtype not in _KERNEL_DTYPES:
        raise RuntimeError(f"the Triton selective scan takes float16, bfloat16 or float32, got u as {u.dtype}; "
                           "use scan_backend='chunked' (float64 is for gradcheck)")
    operands = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands):
        raise RuntimeError("the Triton selective scan has no backward pass; "
                           "train with scan_backend='chunked' (or 'auto', which picks it for gradients)")
    if not u.is_cuda and not triton_interpreting():
        raise RuntimeError(
            f"the Triton selective scan needs CUDA tensors, got u on {u.device}; "
            "use scan_backend='chunked' on CPU"
        )
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    bsz, dim, length = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    y = torch.empty_like(u)
    last = torch.empty(bsz, dim, n_state, device=u.device, dtype=torch.float32)
    # Absent optional operands: the kernel never reads them (constexpr flags), any pointer will do.
    _scan_fwd_kernel[(bsz, triton.cdiv(dim, _BLOCK_D))](
        u, delta, A, B, C,
        u if D is None else D.contiguous(),
        u if z is None else z.contiguous(),
        u if delta_bias is None else delta_bias.contiguous(),
        y, last,
        dim, length, n_state, n_groups, dim // n_groups,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        BLOCK_D=_BLOCK_D, BLOCK_N=max(triton.next_power_of_2(n_state), 2), BLOCK_T=_BLOCK_T,
        num_warps=4,
    )
    return (y, last) if return_last_state else y
