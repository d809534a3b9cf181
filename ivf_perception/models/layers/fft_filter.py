"""Frequency-domain filtering of a feature map's amplitude spectrum, its phase kept.

CMFS (eq. 8-9) filters the concatenated spatial and wavelet features in the Fourier domain:
the amplitude of ``rfft2`` goes through a small learned mapping (1×1 conv + LeakyReLU, twice)
while the phase, which carries most of the structure (where edges are), is kept; ``irfft2``
returns to the original H×W. Amplitude carries the global intensity/texture statistics in
which the modalities differ, so re-weighting it lets the block mix them globally at
``O(HW log HW)`` cost.

The FFT runs in at least float32 (``rfft2`` does not take half precision on every device and
size); the learned mapping sees the amplitude in the input's dtype. Amplitude and phase come
from ``abs``/``angle``, whose gradients PyTorch defines as zero at an exactly zero frequency
bin, so no epsilon is needed (CMFS's public code adds 1e-8 at three places for this).

While ``torch.export`` (or the dynamo ONNX exporter) traces, the same filter runs as real DFTs
written as matrix products (:mod:`~ivf_perception.models.layers.dft`): ONNX's ``DFT`` op is not
run by TensorRT and the exporter does not lower complex tensors everywhere, while MatMul, Cos
and Sin are supported by every ONNX consumer, and the bases are built from the traced size, so a
dynamic-size export works too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.dft import amplitude_filter_dft
from ivf_perception.models.layers.factories import factory_kwargs

__all__ = ["FFT_NORMS", "FFTAmplitudeFilter", "fft_amplitude_filter"]

FFT_NORMS = ("backward", "ortho", "forward")
"""Accepted ``norm`` values, as in :func:`torch.fft.rfft2`."""


def _check_norm(norm: str) -> None:
    if norm not in FFT_NORMS:
        raise ValueError(f"Unknown FFT norm {norm!r}; supported norms: {list(FFT_NORMS)}")


def _unit_phase(spectrum: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``exp(i·angle(X))`` as ``X / |X|``, and 1 where ``X = 0`` (``angle(0) = 0``).

    The same values as ``polar(1, angle(X))`` up to float rounding, without an ``atan2`` and a
    ``cos``/``sin`` per bin (CMFS small at 240×320, one thread: ~25 ms less per frame). Used for
    inference only: its input gradients differ from the polar form's (also in float64), so
    training keeps ``polar``/``angle`` and the gradients it was validated with.
    """
    nonzero = magnitude > 0
    unit = spectrum / torch.where(nonzero, magnitude, torch.ones_like(magnitude))
    return torch.where(nonzero, unit, torch.ones_like(unit))


def fft_amplitude_filter(
    x: torch.Tensor, amplitude_fn: Callable[[torch.Tensor], torch.Tensor], norm: str = "backward"
) -> torch.Tensor:
    """Map the amplitude spectrum of ``x`` with ``amplitude_fn``, keep the phase, transform back.

    ``y = irfft2(amplitude_fn(|X|) · exp(i·angle(X)))`` with ``X = rfft2(x)``; an identity
    ``amplitude_fn`` returns ``x``.

    Args:
        x: feature map.
        amplitude_fn: maps the amplitude to a new amplitude of the same shape.
        norm: FFT normalisation (:data:`FFT_NORMS`); CMFS uses ``"backward"``.

    Returns:
        The filtered map, in ``x``'s dtype and size (odd W included).

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W); amplitude_fn: (B, C, H, W//2+1) -> same.

    Example:
        >>> x = torch.randn(1, 2, 5, 7)
        >>> torch.allclose(fft_amplitude_filter(x, lambda a: a), x, atol=1e-6)
        True
    """
    check_shape(x, "B C H W", name="x")
    _check_norm(norm)
    if torch.compiler.is_exporting():  # no FFT in TensorRT; one formulation for every exporter
        return amplitude_filter_dft(x, amplitude_fn, norm)
    h, w = x.shape[-2:]
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    spectrum = torch.fft.rfft2(x.to(compute_dtype), norm=norm)
    magnitude = spectrum.abs()
    amplitude = amplitude_fn(magnitude.to(x.dtype))
    check_shape(amplitude, "B C H W", name="amplitude_fn(amplitude)", B=x.shape[0], C=x.shape[1], H=h,
                W=spectrum.shape[-1])
    if torch.is_grad_enabled() and spectrum.requires_grad:  # training: angle's gradient, as before
        filtered = torch.polar(amplitude.to(compute_dtype), spectrum.angle())
    else:
        filtered = amplitude.to(compute_dtype) * _unit_phase(spectrum, magnitude)
    return torch.fft.irfft2(filtered, s=(h, w), norm=norm).to(x.dtype)


class FFTAmplitudeFilter(nn.Module):
    """CMFS's learned amplitude filter: :func:`fft_amplitude_filter` with ``(1×1 conv, LeakyReLU) × 2``.

    Args:
        channels: channels C of the map (the convs mix amplitudes across channels, per frequency).
        negative_slope: LeakyReLU slope (CMFS: 0.1).
        norm: FFT normalisation (:data:`FFT_NORMS`).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W), any H, W.
    """

    def __init__(
        self,
        channels: int,
        negative_slope: float = 0.1,
        norm: str = "backward",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        dd = factory_kwargs(device, dtype)
        self.norm = norm
        self.amplitude = nn.Sequential(
            nn.Conv2d(channels, channels, 1, **dd),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(channels, channels, 1, **dd),
            nn.LeakyReLU(negative_slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fft_amplitude_filter(x, self.amplitude, self.norm)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"
