"""Real 2-D DFTs as matrix products, for exporting :func:`~.fft_filter.fft_amplitude_filter`.

Why: an exported graph must run in ONNX Runtime and TensorRT, and TensorRT runs no FFT (ONNX
``DFT``) while every consumer runs MatMul, Cos and Sin. A DFT of length N is a product with an
N×N cosine and sine basis, ``O(N)`` per output instead of ``O(log N)``, which is cheap at the
feature-map sizes the filter sees (CMFS: H/4 × W/4 and smaller). The bases are computed in the
graph from the input's size (``k·n mod N`` in integers, then one multiplication by 2π/N, so the
angles are exact before the cosine), so the same code serves fixed and dynamic-size exports.

Conventions equal ``torch.fft.rfft2`` / ``irfft2(s=(H, W))``: the last dimension is the real,
half-spectrum one (``W//2 + 1`` bins), ``norm`` scales as in torch (``backward``: none forward,
``1/(HW)`` inverse; ``ortho``: ``1/√(HW)`` both ways; ``forward``: ``1/(HW)`` forward), and the
inverse ignores the imaginary parts of the DC and Nyquist bins, as a real inverse FFT does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["rfft2_matmul", "irfft2_matmul", "amplitude_filter_dft"]


def _basis(n: int, bins: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2π·k·j/n for j < n (rows) and k < bins (columns), in ``like``'s dtype."""
    j = torch.arange(n, device=like.device)
    k = torch.arange(bins, device=like.device)
    angle = (j[:, None] * k[None, :] % n).to(like.dtype) * (2 * math.pi / n)
    return torch.cos(angle), torch.sin(angle)


def _scales(norm: str, h: int, w: int) -> tuple[float, float]:
    """Forward and inverse factors of ``norm`` for an H×W transform."""
    size = h * w
    return {"backward": (1.0, 1.0 / size), "ortho": (size ** -0.5, size ** -0.5),
            "forward": (1.0 / size, 1.0)}[norm]


def rfft2_matmul(x: torch.Tensor, norm: str = "backward") -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``torch.fft.rfft2(x, norm=norm)``, (…, H, W//2+1) each."""
    h, w = x.shape[-2:]
    cos_w, sin_w = _basis(w, w // 2 + 1, x)  # (W, W//2+1)
    cos_h, sin_h = _basis(h, h, x)  # (H, H), symmetric
    re, im = x @ cos_w, -(x @ sin_w)  # along W: e^{-iθ} = cos θ − i sin θ
    real = cos_h @ re + sin_h @ im  # along H, complex input
    imag = cos_h @ im - sin_h @ re
    scale = _scales(norm, h, w)[0]
    return (real, imag) if scale == 1.0 else (real * scale, imag * scale)


def irfft2_matmul(real: torch.Tensor, imag: torch.Tensor, width: int, norm: str = "backward") -> torch.Tensor:
    """``torch.fft.irfft2(torch.complex(real, imag), s=(H, width), norm=norm)``."""
    h, bins = real.shape[-2:]
    cos_h, sin_h = _basis(h, h, real)
    re = cos_h @ real - sin_h @ imag  # inverse along H: e^{+iθ}
    im = cos_h @ imag + sin_h @ real
    cos_w, sin_w = _basis(width, bins, real)  # (W, bins)
    # Hermitian symmetry: every bin but DC (and Nyquist for even W) stands for two.
    k = torch.arange(bins, device=real.device)
    weight = torch.where((k == 0) | (2 * k == width), 1.0, 2.0).to(real.dtype)
    out = (re * weight) @ cos_w.T - (im * weight) @ sin_w.T  # sin is 0 at DC and Nyquist
    return out * _scales(norm, h, width)[1]


def amplitude_filter_dft(x: torch.Tensor, amplitude_fn: Callable[[torch.Tensor], torch.Tensor],
                         norm: str = "backward") -> torch.Tensor:
    """:func:`~.fft_filter.fft_amplitude_filter` computed with :func:`rfft2_matmul`.

    The phase is kept as the unit vector ``X/|X|`` (``(1, 0)`` where ``|X| = 0``, as
    ``angle(0) = 0``), which equals ``exp(i·angle(X))`` without an arctangent.
    """
    w = x.shape[-1]
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    real, imag = rfft2_matmul(x.to(compute_dtype), norm)
    magnitude = torch.sqrt(real * real + imag * imag)
    amplitude = amplitude_fn(magnitude.to(x.dtype)).to(compute_dtype)
    zero = magnitude == 0
    safe = torch.where(zero, 1.0, magnitude)
    cos_phase = torch.where(zero, 1.0, real / safe)
    sin_phase = torch.where(zero, 0.0, imag / safe)
    return irfft2_matmul(amplitude * cos_phase, amplitude * sin_phase, w, norm).to(x.dtype)
