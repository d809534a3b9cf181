"""Forward selective scan as a Triton kernel: the CUDA path when mamba-ssm is not installed.

Why: mamba-ssm only ships as a source build that needs minutes of ``nvcc`` and a matching
toolkit, so most GPU machines run our chunked PyTorch form, which launches ``2T + L/T``
small kernels per call. Triton compiles one kernel at first use from a plain ``pip install
triton`` (it comes with CUDA builds of torch).

Algorithm (the recurrence of :func:`~ivf_perception.models.ops.selective_scan.selective_scan_ref`):
one program per batch element and block of ``BLOCK_D`` channels holds the state
``h`` (``BLOCK_D × N``) in registers and walks the sequence once, so the work is
O(B·D·N·L) with no (B, D, N, L) tensor anywhere and every operand read exactly once.
Programs are independent (batch × channel blocks run in parallel); time is sequential
inside each, which is what the recurrence needs. Δ's bias and softplus (PyTorch's threshold
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

_BLOCK_D = 32
"""Channels per program: 32 × N_pad float32 states fit in registers for N up to 64."""


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its NumPy interpreter (``TRITON_INTERPRET=1``), which
    takes CPU tensors; the CPU tests use it to check the kernel without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, a_ptr, b_ptr, c_ptr, dskip_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    dim, length, n_state, n_groups, per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: batch element ``program_id(0)``, channels ``program_id(1) * BLOCK_D + …``.

    Layouts (contiguous): u, delta, z, y (B, D, L); A (D, N); B, C (B, G, N, L); D, bias (D,);
    last (B, D, N) float32.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]

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
    for t in range(0, length):
        u_t = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            # torch.nn.functional.softplus with threshold 20: linear above it, no exp overflow
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))), dt)
        b_t = tl.load(b_ptr + bc_row + t, mask=mask_dn, other=0.0).to(tl.float32)
        c_t = tl.load(c_ptr + bc_row + t, mask=mask_dn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * a) * h + (dt * u_t)[:, None] * b_t
        y_t = tl.sum(h * c_t, axis=1)
        if HAS_D:
            y_t = y_t + d_skip * u_t
        if HAS_Z:
            z_t = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
            y_t = y_t * z_t * tl.sigmoid(z_t)
        tl.store(y_ptr + row + t, y_t.to(y_ptr.dtype.element_ty), mask=mask_d)

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
        BLOCK_D=_BLOCK_D, BLOCK_N=max(triton.next_power_of_2(n_state), 2),
    )
    return (y, last) if return_last_state else y
