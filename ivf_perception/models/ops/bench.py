"""Speed and accuracy of the selective scan's implementations against the sequential reference:
the chunked PyTorch form and, where it is built, the fused CPU kernel (or the CUDA kernel).

Used by ``ivf-perception bench``. The default operands are those of S4Fusion's ``small``
preset at its first scale: four scan directions stacked as channels (D = 4·48), grouped
B/C (G = 4, one group per direction), N = 12, and L = 19200 tokens (a 480×640 image after
the 4× patch embedding is 120×160 = 19200 tokens). Δ and A look like a freshly initialised
Mamba layer's (softplus(Δ) mostly in 0.005..0.05, S4D-real A = -(1..N)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import torch

from ivf_perception.models.ops._backend import has_cpu_scan
from ivf_perception.models.ops.selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref

__all__ = ["bench_selective_scan"]


def _timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls (the minimum is the least noisy on a shared CPU)."""
    best, out = float("inf"), torch.empty(0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_selective_scan(
    L: int = 19200,
    D: int = 4 * 48,
    N: int = 12,
    B: int = 1,
    G: int = 4,
    device: str | torch.device = "cpu",
    chunk_size: int = 64,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the reference, the chunked scan and the fused CPU kernel (forward, no grad) on
    identical float32 inputs, in one run so that their ratios share the machine's load.

    The reference runs once (it is the slow one, about 2-3 s at the defaults on one CPU
    core); the chunked form and the kernel run ``repeats`` times, alternating, and their
    best times are reported. The kernel is timed only on CPU where it is built.

    Args:
        L: sequence length.
        D: channels (all scan directions together).
        N: state size.
        B: batch size.
        G: groups of B/C (D must be divisible by G).
        device: where to run.
        chunk_size: chunk length of the chunked form.
        repeats: timed calls of the chunked form and of the kernel.
        seed: seed of the random operands.

    Returns:
        ``{"L", "D", "N", "B", "G", "chunk_size", "device", "ref_s", "chunked_s", "speedup",
        "max_abs_err", "max_abs_ref", "fused_s", "fused_speedup", "fused_max_abs_err"}``: seconds
        per call, the ratio ref/chunked, the largest absolute difference between the chunked and
        the reference outputs and, for scale, the largest |output|; the kernel's time, its
        speed-up over the chunked form and its error (these three None without the kernel).
    """
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dev)

    u, z = rand(B, D, L), rand(B, D, L)
    delta = rand(B, D, L) * 0.5 - 4.0  # softplus(-4 ± 1) ~ 0.007..0.05, Mamba's dt range
    A = -torch.arange(1, N + 1, dtype=torch.float32, device=dev).repeat(D, 1)  # S4D-real init
    Bm, Cm, Dv = rand(B, G, N, L), rand(B, G, N, L), torch.ones(D, device=dev)

    def run_ref() -> torch.Tensor:
        return cast(torch.Tensor, selective_scan_ref(u, delta, A, Bm, Cm, Dv, z, delta_softplus=True))

    def run_chunked() -> torch.Tensor:
        out = selective_scan_chunked(u, delta, A, Bm, Cm, Dv, z, delta_softplus=True, chunk_size=chunk_size)
        return cast(torch.Tensor, out)

    def run_fused() -> torch.Tensor:
        return selective_scan(u, delta, A, Bm, Cm, Dv, z, delta_softplus=True, backend="cpu")

    fused = dev.type == "cpu" and has_cpu_scan()
    with torch.no_grad():
        ref_s, y_ref = _timed(run_ref, dev, 1)
        chunked_s = fused_s = float("inf")
        y_fused = y_ref
        for _ in range(repeats):  # alternate, so that a burst of load hits both
            t, y = _timed(run_chunked, dev, 1)
            chunked_s = min(chunked_s, t)
            if fused:
                t, y_fused = _timed(run_fused, dev, 1)
                fused_s = min(fused_s, t)
    return {
        "L": L, "D": D, "N": N, "B": B, "G": G, "chunk_size": chunk_size, "device": str(dev),
        "ref_s": ref_s, "chunked_s": chunked_s, "speedup": ref_s / chunked_s,
        "max_abs_err": float((y - y_ref).abs().max()), "max_abs_ref": float(y_ref.abs().max()),
        "fused_s": fused_s if fused else None,
        "fused_speedup": chunked_s / fused_s if fused else None,
        "fused_max_abs_err": float((y_fused - y_ref).abs().max()) if fused else None,
    }
