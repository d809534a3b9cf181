"""Selective scan (Mamba's S6 recurrence): the sequential definition, a chunked parallel form
and a dispatcher that uses a fused kernel when one is there (mamba-ssm's on CUDA, ours on CPU).

The recurrence (Gu & Dao, "Mamba", 2023), per batch element ``b``, channel ``d`` and state
``n``::

    Δ_t   = softplus(Δ_t + bias)              (only with delta_softplus; bias optional)
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t    (h_{-1} = 0)
    y_t   = C_t · h_t + D u_t
    y_t  ← y_t · silu(z_t)                     (only when z is given)

``B`` and ``C`` depend on the input (shape ``(B, N, L)``) and may be grouped, ``(B, G, N, L)``,
where channel ``d`` reads group ``d // (D // G)``: VMamba and S4Fusion stack their four scan
directions along the channels and give each direction its own B/C this way.

Why several implementations: the compiled kernels are optional (mamba-ssm imports its CUDA
extension at import time; our C++ CPU kernel exists only where it could be built; our Triton
kernel needs triton and a GPU) and have no ONNX form, so every machine and every export needs a
pure-PyTorch version. :func:`selective_scan_ref` is the literal definition (a Python loop over
time) that everything else is tested against; :func:`selective_scan_chunked` is the portable
fast form, the fallback and the training path (the fused CPU and Triton kernels are
forward-only); :func:`selective_scan` picks one: on CUDA mamba-ssm's kernel → our Triton kernel
(:mod:`.scan_triton`, inference) → chunked; on CPU the fused CPU kernel → chunked.

Everything is computed in at least float32 (half and bfloat16 inputs are promoted, float64
stays float64 so that ``gradcheck`` works) and returned in ``u``'s dtype; the optional last
state is returned in that compute dtype, as mamba-ssm does.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, cast, overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import BackwardCFunction, FunctionCtx, once_differentiable

from ivf_perception.checks import ShapeError, check_shape, checks_enabled
from ivf_perception.models.ops._backend import (
    get_cuda_scan,
    get_triton_scan,
    has_cpu_scan,
    has_cuda_scan,
    has_triton_scan,
)

__all__ = [
    "SCAN_BACKENDS",
    "SelectiveScan",
    "cpu_scan_usable",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

SCAN_BACKENDS = ("auto", "chunked", "ref", "cuda", "cpu", "triton", "export")
"""Accepted ``backend`` values: ``auto`` (on CUDA: mamba-ssm's kernel, else our Triton kernel for
inference, else chunked; on CPU: the fused CPU kernel when usable, else chunked; the ``export``
form while exporting), or one forced (``cpu`` is the fused CPU kernel)."""

ScanResult = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- shared helpers


class _Operands(NamedTuple):
    """Inputs after checking, dtype promotion and the Δ transform; B and C always grouped."""

    u: torch.Tensor  # (B, D, L)
    delta: torch.Tensor  # (B, D, L), bias and softplus applied
    A: torch.Tensor  # (D, N)
    B: torch.Tensor  # (B, G, N, L)
    C: torch.Tensor  # (B, G, N, L)
    D: torch.Tensor | None  # (D,)
    z: torch.Tensor | None  # (B, D, L)


def _check_operands(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ``ShapeError`` (or ``TypeError``) naming the operand that does not fit."""
    if not checks_enabled():
        return
    check_shape(u, "B D L", name="u")
    bsz, dim, length = u.shape
    if length < 1:
        raise ShapeError(f"u: expected a sequence length L >= 1, got shape {tuple(u.shape)}")
    check_shape(delta, "B D L", name="delta", B=bsz, D=dim, L=length)
    check_shape(A, "D N", name="A", D=dim)
    if A.is_complex():
        raise TypeError("A: complex state matrices are not supported; pass a real (D, N) tensor")
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            check_shape(t, "B N L", name=name, B=bsz, N=n_state, L=length)
        elif t.dim() == 4:
            check_shape(t, "B G N L", name=name, B=bsz, N=n_state, L=length)
        else:
            raise ShapeError(
                f"{name}: expected layout (B, N, L) or grouped (B, G, N, L), got shape {tuple(t.shape)}"
            )
    if B.shape != C.shape:
        raise ShapeError(f"B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}")
    groups = B.shape[1] if B.dim() == 4 else 1
    if groups < 1 or dim % groups:
        raise ShapeError(
            f"B: the channel count D={dim} of u is not divisible by the number of groups G={groups} "
            f"of B and C (shape {tuple(B.shape)}); use G dividing D"
        )
    if D is not None:
        check_shape(D, "D", name="D", D=dim)
    if z is not None:
        check_shape(z, "B D L", name="z", B=bsz, D=dim, L=length)
    if delta_bias is not None:
        check_shape(delta_bias, "D", name="delta_bias", D=dim)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: half precision cannot hold the recurrence's dynamic range."""
    return torch.promote_types(dtype, torch.float32)


def _prepare(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> _Operands:
    """Promote to the compute dtype, apply Δ's bias and softplus, and group ungrouped B/C."""
    dtype = _compute_dtype(u.dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype).unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    return _Operands(
        u.to(dtype), delta, A.to(dtype), B.to(dtype), C.to(dtype),
        None if D is None else D.to(dtype),
        None if z is None else z.to(dtype),
    )


def _finish(y: torch.Tensor, ops: _Operands, out_dtype: torch.dtype) -> torch.Tensor:
    """Skip term, gate and cast, shared by every pure-PyTorch path."""
    if ops.D is not None:
        y = y + ops.D.unsqueeze(-1) * ops.u
    if ops.z is not None:
        y = y * F.silu(ops.z)
    return y.to(out_dtype)


# --------------------------------------------------------------------------- reference


def selective_scan_ref(
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
) -> ScanResult:
    """The selective scan by its definition: one Python step per time step.

    Slow (L small kernels) but obviously right; it is the oracle for the chunked path and the
    CUDA kernel. Gradients come from autograd.

    Args:
        u: input sequence.
        delta: time steps Δ (before ``delta_bias``/softplus).
        A: state matrix (real, diagonal per channel; negative for a stable scan).
        B: input projection, per time step; optionally grouped.
        C: output projection, same layout as ``B``.
        D: skip weight per channel.
        z: gate; the output is multiplied by ``silu(z)``.
        delta_bias: added to Δ before the softplus.
        delta_softplus: apply softplus to Δ (+ bias).
        return_last_state: also return ``h_{L-1}``.

    Returns:
        ``y`` in ``u``'s dtype, or ``(y, last_state)`` with the state in the compute dtype.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L) with D % G == 0;
        D, delta_bias: (D,)  ->  y: (B, D, L); last_state: (B, D, N)
    """
    _check_operands(u, delta, A, B, C, D, z, delta_bias)
    ops = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    bsz, dim, _ = ops.u.shape
    per_group = dim // ops.B.shape[1]
    # Time-major copies so that every step reads contiguous (B, D, N) slices.
    delta_t = ops.delta.permute(2, 0, 1).contiguous()  # (L, B, D)
    decay = torch.exp(delta_t.unsqueeze(-1) * ops.A)  # (L, B, D, N)
    b_t = ops.B.repeat_interleave(per_group, dim=1).permute(3, 0, 1, 2).contiguous()  # (L, B, D, N)
    c_t = ops.C.repeat_interleave(per_group, dim=1).permute(3, 0, 1, 2).contiguous()
    drive = (ops.delta * ops.u).permute(2, 0, 1).contiguous().unsqueeze(-1) * b_t  # Δ_t u_t B_t
    h = ops.u.new_zeros(bsz, dim, ops.A.shape[1])
    ys = []
    for decay_i, drive_i, c_i in zip(decay.unbind(0), drive.unbind(0), c_t.unbind(0)):
        h = decay_i * h + drive_i
        ys.append((h * c_i).sum(-1))
    y = _finish(torch.stack(ys, dim=-1), ops, u.dtype)
    return (y, h) if return_last_state else y


# --------------------------------------------------------------------------- chunked form


def _decay(delta_t: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``exp(Δ_t A)``: Δ_t A <= 0 for a stable A, so this never overflows."""
    return torch.mul(delta_t, A).exp_()


def _local_end_states(dl: torch.Tensor, x: torch.Tensor, Bc: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """State at the end of each chunk when every chunk starts from zero."""
    h = torch.mul(x[0], Bc[0])
    for t in range(1, dl.shape[0]):
        h.mul_(_decay(dl[t], A)).addcmul_(x[t], Bc[t])
    return h


def _chunk_start_states(dl: torch.Tensor, x: torch.Tensor, Bc: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """True state entering each chunk: local chunk-end states chained by whole-chunk decays."""
    state = x.new_zeros(*x.shape[1:4], A.shape[2])
    starts = [state]
    if x.shape[-1] > 1:
        local = _local_end_states(dl[..., :-1], x[..., :-1], Bc[..., :-1], A).unbind(-1)
        chunk_decay = torch.exp(dl[..., :-1].sum(0) * A).unbind(-1)  # exp(A Σ_chunk Δ) <= 1
        for local_c, decay_c in zip(local, chunk_decay):
            state = torch.addcmul(local_c, decay_c, state)
            starts.append(state)
    return torch.stack(starts, dim=-1)


def _chunked_forward(
    dl: torch.Tensor, x: torch.Tensor, Bc: torch.Tensor, Cc: torch.Tensor, A: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs, last state and chunk-start states (saved for the backward pass)."""
    starts = _chunk_start_states(dl, x, Bc, A)
    h = starts.clone()
    # Eager: write into one preallocated output. Keeping T small outputs alive between the
    # large temporaries fragments the heap, and every temporary then becomes a fresh,
    # page-faulting allocation (25% slower). The TorchScript ONNX exporter, however, drops
    # writes into a buffer made inside an autograd.Function, so tracing stacks a list.
    y = None if torch.jit.is_tracing() else x.new_empty(dl.shape[0], *x.shape[1:4], x.shape[-1])
    y_steps = []
    for t in range(dl.shape[0]):
        h.mul_(_decay(dl[t], A)).addcmul_(x[t], Bc[t])
        y_t = (h * Cc[t]).sum(3)
        if y is None:
            y_steps.append(y_t)
        else:
            y[t] = y_t
    return (torch.stack(y_steps) if y is None else y), h[..., -1].clone(), starts


class _ChunkedScan(torch.autograd.Function):
    """The scan core on chunk-layout tensors, with a hand-written, recomputing backward.

    Layouts (T = chunk length, c = number of chunks, K = D // G channels per group)::

        dl, x: (T, B, G, K, 1, c)   Δ (transformed) and Δ·u
        Bc, Cc: (T, B, G, 1, N, c)
        A: (G, K, N, 1)
        -> y: (T, B, G, K, c), last state: (B, G, K, N)

    Only the inputs and the chunk-start states (``1/T`` of all states) are kept for backward,
    which recomputes the states, so training memory stays O(inputs) instead of O(B D N L).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, dl: torch.Tensor, x: torch.Tensor, Bc: torch.Tensor, Cc: torch.Tensor, A: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, last, starts = _chunked_forward(dl, x, Bc, Cc, A)
        ctx.save_for_backward(dl, x, Bc, Cc, A, starts)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(
        ctx: BackwardCFunction, gy: torch.Tensor, glast: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # torch's stub types ``saved_tensors`` as a 1-tuple; it holds what forward saved.
        dl, x, Bc, Cc, A, starts = cast("tuple[torch.Tensor, ...]", ctx.saved_tensors)
        n_steps, nc = dl.shape[0], dl.shape[-1]
        gy = gy.unsqueeze(4)  # (T, B, G, K, 1, c)

        # States h_t of every step (the forward recurrence again, kept this time).
        states = []
        h = starts
        for t in range(n_steps):
            h = torch.addcmul(h * _decay(dl[t], A), x[t], Bc[t])
            states.append(h)

        # Adjoint λ_t = ∂loss/∂h_t obeys λ_t = C_t gy_t + exp(Δ_{t+1} A) λ_{t+1}: the same scan
        # run backwards. Chunk by chunk: the adjoint leaving each chunk's start from a zero
        # future, chained right to left by whole-chunk decays, gives ``future[c]``, the
        # gradient reaching chunk c's last state from later chunks (the last chunk's is glast).
        future = torch.empty_like(starts)
        future[..., -1] = glast
        if nc > 1:
            lam = torch.mul(Cc[-1, ..., 1:], gy[-1, ..., 1:])
            for t in range(n_steps - 2, -1, -1):
                lam.mul_(_decay(dl[t + 1, ..., 1:], A)).addcmul_(Cc[t, ..., 1:], gy[t, ..., 1:])
            leaving = lam.mul_(_decay(dl[0, ..., 1:], A))
            chunk_decay = torch.exp(dl[..., 1:].sum(0) * A)
            for c in range(nc - 1, 0, -1):
                torch.addcmul(leaving[..., c - 1], chunk_decay[..., c - 1], future[..., c], out=future[..., c - 1])

        g_dl, g_x = torch.empty_like(dl), torch.empty_like(x)
        g_B, g_C = torch.empty_like(Bc), torch.empty_like(Cc)
        g_A = torch.zeros_like(starts)
        rho = future  # gradient reaching h_t from step t+1 onwards
        for t in range(n_steps - 1, -1, -1):
            lam = torch.addcmul(rho, Cc[t], gy[t])
            torch.sum(states[t] * gy[t], dim=2, keepdim=True, out=g_C[t])
            torch.sum(lam * Bc[t], dim=3, keepdim=True, out=g_x[t])
            torch.sum(lam * x[t], dim=2, keepdim=True, out=g_B[t])
            rho = lam.mul_(_decay(dl[t], A))
            q = rho * (states[t - 1] if t > 0 else starts)  # ∂loss/∂(Δ_t A)
            torch.sum(q * A, dim=3, keepdim=True, out=g_dl[t])
            g_A.addcmul_(q, dl[t])
        g_A = g_A.sum(dim=(0, 4)).unsqueeze(-1)
        return g_dl, g_x, g_B, g_C, g_A


def _to_chunks(t: torch.Tensor, chunk: int, pad: int) -> torch.Tensor:
    """(B, G, M, L) -> (T, B, G, M, c), zero-padded at the end to c·T steps."""
    if pad:
        t = F.pad(t, (0, pad))
    # As a 2-D transpose the copy takes PyTorch's cache-blocked path (~6x faster than movedim).
    return t.reshape(-1, chunk).t().contiguous().view(chunk, *t.shape[:-1], -1)


def selective_scan_chunked(
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
    chunk_size: int = 64,
) -> ScanResult:
    """The selective scan in a chunked, parallel form: same results as the reference, fast on CPU.

    Algorithm. The sequence is cut into ``c = ceil(L / T)`` chunks of
    ``T = min(chunk_size, ceil(sqrt(L)))`` steps (the tail is padded with Δ = 0, u = 0, which
    leaves the state unchanged) and laid out step-major, ``(T, B, G, K, N, c)``, so that one
    vectorised operation advances *all chunks* by one step:

    1. Local pass: run the recurrence inside every chunk from a zero state (``T`` steps, each
       over all chunks at once) and keep only each chunk's end state.
    2. Carry pass: the true state entering chunk ``c`` is
       ``s_c = exp(A Σ_{chunk c-1} Δ) ⊙ s_{c-1} + local_end_{c-1}`` (``c`` small steps).
    3. Output pass: run the recurrence again from the true chunk-start states, reducing
       ``y_t = C_t · h_t`` on the fly.

    This is O(B·D·N·L) work in ``2T + c`` Python-level steps instead of ``L``, with no
    (B, D, N, L) tensor in memory. It only ever exponentiates ``Δ A`` (<= 0 for a stable
    A), never a difference of cumulative sums as the "cumsum / exp(-cumsum)" parallel
    forms do, so long sequences and strongly decaying states cannot overflow or produce
    ``inf - inf``. (Mamba-2's quadratic chunk form needs a scalar decay per step; here the
    decay differs per channel and state, which would cost T times more exponentials.)

    Backward is hand-written (:class:`_ChunkedScan`): it recomputes the states from the
    saved chunk-start states and runs the adjoint recurrence with the same three passes
    in reverse, so training keeps O(inputs) memory. The function exports to ONNX with
    standard operators (the loops unroll for the fixed shapes of an export).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in
            :func:`selective_scan_ref`.
        chunk_size: the longest chunk. The loops make about ``2T + L/T`` Python-level
            steps, least near ``T = sqrt(L)``, so shorter sequences use ``ceil(sqrt(L))``;
            beyond L = 4096 the work per step dominates and 64 is as fast as larger chunks
            on CPU (measured with D = 288, N = 12) while keeping the exported graph small.

    Returns:
        ``y`` in ``u``'s dtype, or ``(y, last_state)`` with the state in the compute dtype.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L) with D % G == 0;
        D, delta_bias: (D,)  ->  y: (B, D, L); last_state: (B, D, N)

    Example:
        >>> u, dt = torch.randn(2, 8, 100), torch.rand(2, 8, 100)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 4, 100), torch.randn(2, 4, 100)
        >>> selective_scan_chunked(u, dt, A, B, C, chunk_size=16).shape
        torch.Size([2, 8, 100])
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _check_operands(u, delta, A, B, C, D, z, delta_bias)
    ops = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    bsz, dim, length = ops.u.shape
    groups, n_state = ops.B.shape[1], ops.B.shape[2]
    per_group = dim // groups
    chunk = min(chunk_size, math.isqrt(length - 1) + 1)  # at most ceil(sqrt(L)), see chunk_size
    nc = math.ceil(length / chunk)
    pad = nc * chunk - length

    grouped = (bsz, groups, per_group, length)
    dl = _to_chunks(ops.delta.reshape(grouped), chunk, pad).unsqueeze(4)  # (T, B, G, K, 1, c)
    x = _to_chunks((ops.delta * ops.u).reshape(grouped), chunk, pad).unsqueeze(4)
    Bc = _to_chunks(ops.B, chunk, pad).unsqueeze(3)  # (T, B, G, 1, N, c)
    Cc = _to_chunks(ops.C, chunk, pad).unsqueeze(3)
    y, last = _ChunkedScan.apply(dl, x, Bc, Cc, ops.A.reshape(groups, per_group, n_state, 1))
    y = y.permute(1, 2, 3, 4, 0).reshape(bsz, dim, nc * chunk)[..., :length].contiguous()
    y = _finish(y, ops, u.dtype)
    return (y, last.reshape(bsz, dim, n_state)) if return_last_state else y


# --------------------------------------------------------------------------- dispatch


def _cuda_usable(u: torch.Tensor) -> bool:
    """``auto`` takes the kernel only for CUDA tensors it supports, never while exporting."""
    return (
        u.is_cuda
        and u.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
        and has_cuda_scan()
    )


def _triton_usable(u: torch.Tensor, operands: tuple[torch.Tensor | None, ...]) -> bool:
    """``auto`` takes the Triton kernel for CUDA inference only: it has no backward pass."""
    return (
        u.is_cuda
        and u.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands))
        and has_triton_scan()
    )


def _selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
) -> ScanResult:
    """mamba-ssm's fused kernel; it wants A, D and delta_bias in float32."""
    scan = get_cuda_scan()
    if not u.is_cuda:
        raise RuntimeError(f"backend='cuda' needs CUDA tensors, got u on {u.device}; move them or use 'chunked'")
    _check_operands(u, delta, A, B, C, D, z, delta_bias)
    return scan(  # type: ignore[return-value]
        u, delta, A.float(), B, C,
        None if D is None else D.float(), z,
        None if delta_bias is None else delta_bias.float(),
        delta_softplus, return_last_state,
    )


_MAX_CPU_STATE = 64
"""Largest state size N the fused CPU kernel holds (``kMaxState`` in csrc/selective_scan_cpu.cpp)."""


def cpu_scan_usable(*tensors: torch.Tensor | None, state_size: int) -> bool:
    """Whether ``auto`` may take the fused CPU kernel for these operands.

    CPU float32 tensors, a state size the kernel holds, nothing that needs a gradient (the
    kernel is forward-only: training takes the chunked path), no ONNX export, tracing or
    compiling (the kernel has no ONNX form, and a traced graph must hold the portable scan),
    and the extension loads (:func:`~ivf_perception.models.ops._backend.has_cpu_scan`).
    """
    present = [t for t in tensors if t is not None]
    return (
        state_size <= _MAX_CPU_STATE
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in present))
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()  # torch.export / dynamo ONNX / torch.compile trace
        and has_cpu_scan()
    )


def _selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
) -> ScanResult:
    """Our fused C++ kernel (``torch.ops.ivf_perception.selective_scan_fwd``): float32, forward only."""
    if not has_cpu_scan():
        raise RuntimeError(
            "the fused CPU selective scan is not available (not built, built for another torch, or disabled "
            "by IVF_DISABLE_CPU_SCAN); build it with `python setup.py build_ext --inplace` or use "
            "scan_backend='chunked'"
        )
    _check_operands(u, delta, A, B, C, D, z, delta_bias)
    operands = (u, delta, A, B, C, D, z, delta_bias)
    if not all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in operands):
        raise RuntimeError("backend='cpu' needs float32 CPU tensors; convert them or use 'chunked'")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands):
        raise RuntimeError("backend='cpu' is forward-only; use 'chunked' (or 'auto') where gradients are needed")
    if A.shape[1] > _MAX_CPU_STATE:
        raise RuntimeError(f"backend='cpu' supports N <= {_MAX_CPU_STATE}, got A of shape {tuple(A.shape)}")
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    y, last = torch.ops.ivf_perception.selective_scan_fwd(
        u, delta, A.contiguous(), B, C,
        None if D is None else D.contiguous(), z,
        None if delta_bias is None else delta_bias.contiguous(), delta_softplus,
    )
    return (y, last) if return_last_state else y


def _check_backend(backend: str) -> None:
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {backend!r}; supported backends: {list(SCAN_BACKENDS)}")


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: Literal[False] = ..., backend: str = ..., chunk_size: int = ...,
) -> torch.Tensor: ...


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., *, return_last_state: Literal[True], backend: str = ..., chunk_size: int = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = ..., z: torch.Tensor | None = ..., delta_bias: torch.Tensor | None = ...,
    delta_softplus: bool = ..., return_last_state: bool = ..., backend: str = ..., chunk_size: int = ...,
) -> ScanResult: ...


def selective_scan(
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
    backend: str = "auto",
    chunk_size: int = 64,
) -> ScanResult:
    """Selective scan with the backend chosen at call time.

    ``auto`` uses mamba-ssm's CUDA kernel when :func:`has_cuda_scan` is true, the tensors are
    on CUDA in a dtype it supports and no ONNX export or tracing is running; while
    ``torch.export`` (or the dynamo ONNX exporter) traces, the ``export`` form
    (:mod:`~ivf_perception.models.ops.scan_export`, scan operators instead of unrolled loops);
    on CPU our fused kernel when :func:`cpu_scan_usable` (float32, no gradient needed, no
    export, extension built); on CUDA, for inference (no operand requiring gradients), our
    Triton kernel when :func:`has_triton_scan` is true; otherwise the chunked PyTorch form.
    ``chunked``, ``ref``, ``cuda``, ``cpu``, ``triton`` and ``export`` force one implementation
    (``cuda``, ``cpu`` and ``triton`` raise a ``RuntimeError`` saying how to get them when they
    are unavailable or cannot run these operands).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state: as in
            :func:`selective_scan_ref`.
        backend: one of :data:`SCAN_BACKENDS`.
        chunk_size: chunk length of the chunked form.

    Returns:
        ``y`` in ``u``'s dtype, or ``(y, last_state)``.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L) with D % G == 0;
        D, delta_bias: (D,)  ->  y: (B, D, L); last_state: (B, D, N)
    """
    _check_backend(backend)
    if backend == "auto":
        if _cuda_usable(u):
            backend = "cuda"
        elif torch.compiler.is_exporting():
            backend = "export"
        elif cpu_scan_usable(u, delta, A, B, C, D, z, delta_bias, state_size=A.shape[-1]):
            backend = "cpu"
        elif _triton_usable(u, (u, delta, A, B, C, D, z, delta_bias)):
            backend = "triton"
        else:
            backend = "chunked"
    if backend == "export":  # scan operators instead of unrolled loops: see scan_export
        from ivf_perception.models.ops.scan_export import selective_scan_export

        return selective_scan_export(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size=chunk_size
        )
    if backend == "cuda":
        return _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "cpu":
        return _selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "triton":
        _check_operands(u, delta, A, B, C, D, z, delta_bias)
        return get_triton_scan()(  # type: ignore[return-value]
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_chunked(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size=chunk_size
    )


class SelectiveScan(nn.Module):
    """Module form of :func:`selective_scan`: stores the options, holds no parameters.

    Args:
        delta_softplus: apply softplus to Δ (+ bias).
        backend: one of :data:`SCAN_BACKENDS`.
        chunk_size: chunk length of the chunked form.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,)
        ->  (B, D, L), or ((B, D, L), (B, D, N)) with ``return_last_state``.
    """

    def __init__(self, delta_softplus: bool = False, backend: str = "auto", chunk_size: int = 64) -> None:
        super().__init__()
        _check_backend(backend)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.delta_softplus = delta_softplus
        self.backend = backend
        self.chunk_size = chunk_size

    def forward(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        return_last_state: bool = False,
    ) -> ScanResult:
        return selective_scan(
            u, delta, A, B, C, D, z, delta_bias, self.delta_softplus, return_last_state,
            backend=self.backend, chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"delta_softplus={self.delta_softplus}, backend={self.backend!r}, chunk_size={self.chunk_size}"
