"""The formulations models switch to while exporting equal the eager operations: real DFTs as
matrix products (CMFS's Fourier amplitude filter) and adaptive pooling with explicit bins."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models.layers import adaptive_pool
from ivf_perception.models.layers.dft import amplitude_filter_dft, irfft2_matmul, rfft2_matmul
from ivf_perception.models.layers.fft_filter import FFT_NORMS, fft_amplitude_filter

SHAPES = [(2, 3, 8, 8), (1, 2, 5, 7), (1, 4, 30, 40), (1, 1, 1, 1), (1, 2, 6, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", FFT_NORMS)
def test_dft_matmuls_equal_torch_fft(shape: tuple[int, ...], norm: str) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    spectrum = torch.fft.rfft2(x, norm=norm)
    real, imag = rfft2_matmul(x, norm)
    torch.testing.assert_close(real, spectrum.real)
    torch.testing.assert_close(imag, spectrum.imag)
    other = torch.complex(torch.randn_like(real), torch.randn_like(imag))  # not Hermitian at DC/Nyquist
    torch.testing.assert_close(irfft2_matmul(other.real, other.imag, shape[-1], norm),
                               torch.fft.irfft2(other, s=shape[-2:], norm=norm))
    amplitude_fn = lambda a: F.leaky_relu(1.5 * a - 0.3, 0.1)  # noqa: E731
    torch.testing.assert_close(amplitude_filter_dft(x, amplitude_fn, norm), fft_amplitude_filter(x, amplitude_fn, norm))


def test_amplitude_filter_uses_the_dft_while_exporting() -> None:
    x = torch.randn(1, 2, 6, 10)
    target = "ivf_perception.models.layers.fft_filter.amplitude_filter_dft"
    with mock.patch(target, wraps=amplitude_filter_dft) as spy, \
            mock.patch.object(torch.compiler, "is_exporting", return_value=True):
        y = fft_amplitude_filter(x, torch.sqrt)
    assert spy.call_count == 1
    torch.testing.assert_close(y, fft_amplitude_filter(x, torch.sqrt), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("shape", "size"), [((2, 3, 8, 8), 4), ((1, 2, 7, 5), 3), ((1, 1, 9, 13), (2, 4)),
                                             ((1, 2, 4, 4), 8)])
def test_adaptive_pooling_bins_equal_torch(shape: tuple[int, ...], size: int | tuple[int, int]) -> None:
    x = torch.randn(shape)
    with mock.patch.object(torch.compiler, "is_exporting", return_value=True):
        avg, top = adaptive_pool.adaptive_avg_pool2d(x, size), adaptive_pool.adaptive_max_pool2d(x, size)
    torch.testing.assert_close(avg, F.adaptive_avg_pool2d(x, size))
    torch.testing.assert_close(top, F.adaptive_max_pool2d(x, size))


def test_tracing_leaves_no_fake_tensor_in_the_constant_caches() -> None:
    """An export before any eager forward traced the Haar kernels and window-scan orders as the
    tracer's fake tensors into their caches; the next eager call then failed ("attempted to run
    this operator with Meta tensors"). Built uncached while tracing, eager calls still work."""
    from ivf_perception.models.layers.window_scan import _orders, window_scan
    from ivf_perception.models.ops.wavelet import _cached_kernels, dwt2

    class Both(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return dwt2(x)[0].sum() + window_scan(x, 2).sum()

    _cached_kernels.cache_clear()
    _orders.cache_clear()
    x = torch.rand(1, 2, 4, 6)
    torch.export.export(Both(), (x,))
    torch.testing.assert_close(Both()(x), dwt2(x)[0].sum() + window_scan(x, 2).sum())
    assert _cached_kernels.cache_info().currsize == 1 and _orders.cache_info().currsize == 1
