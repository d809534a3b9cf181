"""The selective scan for graph export: the chunked form with its loops as ``scan`` operators.

Why: :func:`~ivf_perception.models.ops.selective_scan.selective_scan_chunked` advances the
recurrence with Python loops (``2T + L/T`` steps). Eagerly that is fast, but an exporter traces
every step into the graph: S4Fusion's micro test model at 32×48 became ~3,500 traced nodes and
8,000 ONNX nodes, and the ONNX graph optimiser spent minutes on them (the paper preset at a
camera size took ~15 minutes). Here the same three passes run under
:func:`torch._higher_order_ops.scan.scan`, which ``torch.export`` keeps as one higher-order
node and the dynamo ONNX exporter writes as one ONNX ``Scan`` op (ONNX Runtime runs it; TensorRT
parses it as a loop). The graph is then about a hundred nodes per scan whatever the sequence
length. The ``scan`` operators accept a symbolic length, but the chunk padding and layout
reshapes around them add shape guards that make ``torch.export`` specialise a dynamic-size
trace to the traced size (see ``S4Fusion._dynamic_onnx``), so the models export fixed-size.

The arithmetic is the chunked form's (same passes, same order), so results equal it and the
sequential reference to float32 rounding; only decays ``exp(Δ A) <= 1`` are exponentiated.
The chunk length is ``min(chunk_size, ceil(sqrt(L)))`` for a static L, and ``chunk_size`` when
L is symbolic (a dynamic-size export), where the square root cannot be taken at trace time.

Forward only: exports run without gradients. :func:`~.selective_scan.selective_scan` picks this
form (backend ``auto``) while :func:`torch.compiler.is_exporting` is true.
"""

from __future__ import annotations

import math

import torch
from torch._higher_order_ops.scan import scan_op

from ivf_perception.models.ops.selective_scan import (
    ScanResult,
    _check_operands,
    _finish,
    _prepare,
    _to_chunks,
)

__all__ = ["selective_scan_export"]


def _chunk_length(length: int | torch.SymInt, chunk_size: int) -> int:
    if isinstance(length, int):
        return min(chunk_size, math.isqrt(length - 1) + 1)
    return chunk_size


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides, also on size-1 dims (``contiguous()`` keeps odd ones there):
    ``scan`` requires its initial carry to match the carry it computes, strides included."""
    return t.contiguous().view(-1).view(t.shape)


def selective_scan_export(
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
    """The chunked selective scan with ``scan`` operators instead of Python loops.

    Args and shapes as :func:`~ivf_perception.models.ops.selective_scan.selective_scan_chunked`.
    Runs eagerly too (the tests compare it with the reference that way), but slower than the
    chunked form: use it for export.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    _check_operands(u, delta, A, B, C, D, z, delta_bias)
    ops = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    bsz, dim, length = ops.u.shape
    groups, n_state = ops.B.shape[1], ops.B.shape[2]
    per_group = dim // groups
    chunk = _chunk_length(length, chunk_size)
    nc = (length + chunk - 1) // chunk
    pad = nc * chunk - length

    grouped = (bsz, groups, per_group, length)
    dl = _to_chunks(ops.delta.reshape(grouped), chunk, pad).unsqueeze(4)  # (T, B, G, K, 1, c)
    x = _to_chunks((ops.delta * ops.u).reshape(grouped), chunk, pad).unsqueeze(4)
    Bc = _to_chunks(ops.B, chunk, pad).unsqueeze(3)  # (T, B, G, 1, N, c)
    Cc = _to_chunks(ops.C, chunk, pad).unsqueeze(3)
    a = ops.A.reshape(groups, per_group, n_state, 1)
    zeros = x.new_zeros(bsz, groups, per_group, n_state, nc)

    # The bodies take the carry, one step of each scanned tensor and then the extra inputs
    # (``a``) as positional tensors and return [next carry, step output]: scan_op's flat form.
    def advance(h: torch.Tensor, d_t: torch.Tensor, x_t: torch.Tensor, b_t: torch.Tensor,
                a_: torch.Tensor) -> list[torch.Tensor]:
        h = h * torch.exp(d_t * a_) + x_t * b_t
        return [h, h.new_zeros(())]  # scan wants an output per step; a scalar costs nothing

    # 1. every chunk's end state from a zero start (all chunks at once, T steps).
    local_end, _ = scan_op(advance, [zeros], [dl, x, Bc], (a,))
    # 2. true chunk-start states: chain the local end states by whole-chunk decays (c steps).
    chunk_decay = torch.exp(dl.sum(0) * a)  # (B, G, K, N, c), exp(A Σ_chunk Δ) <= 1

    def carry(state: torch.Tensor, end_c: torch.Tensor, decay_c: torch.Tensor) -> list[torch.Tensor]:
        return [end_c + decay_c * state, state.clone()]  # scan outputs may not alias its inputs

    _, starts = scan_op(carry, [_dense(zeros[..., 0])], [local_end.movedim(-1, 0), chunk_decay.movedim(-1, 0)], ())

    # 3. outputs: the recurrence again from the true starts, reducing y_t = C_t · h_t.
    def emit(h: torch.Tensor, d_t: torch.Tensor, x_t: torch.Tensor, b_t: torch.Tensor, c_t: torch.Tensor,
             a_: torch.Tensor) -> list[torch.Tensor]:
        h = h * torch.exp(d_t * a_) + x_t * b_t
        return [h, (h * c_t).sum(3)]

    last, y = scan_op(emit, [_dense(starts.movedim(0, -1))], [dl, x, Bc, Cc], (a,))  # y: (T, B, G, K, c)
    y = y.permute(1, 2, 3, 4, 0).reshape(bsz, dim, nc * chunk)[..., :length]
    y = _finish(y, ops, u.dtype)
    return (y, last[..., -1].reshape(bsz, dim, n_state)) if return_last_state else y
