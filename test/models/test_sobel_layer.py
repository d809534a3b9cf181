"""Fixed-kernel Sobel op (kornia-style): shapes, errors, hand-computed values, gradients, module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.checks import ShapeError
from ivf_perception.models.layers import SOBEL_BORDERS, Sobel, sobel_gradients, sobel_magnitude


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def _x_ramp(h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """I(y, x) = x: a unit slope to the right."""
    return torch.arange(w, dtype=dtype).expand(1, 1, h, w).clone()


def _conv_reference(image: torch.Tensor, normalized: bool, border: str) -> torch.Tensor:
    """The 3x3 cross-correlation the separable implementation replaced, written out here."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype)
    kx = kx / 8.0 if normalized else kx
    *lead, h, w = image.shape
    mode = {"replicate": "replicate", "reflect": "reflect", "zeros": "constant"}[border]
    padded = F.pad(image.reshape(-1, 1, h, w), (1, 1, 1, 1), mode=mode)
    return F.conv2d(padded, torch.stack((kx, kx.t())).unsqueeze(1)).reshape(*lead, 2, h, w)


@pytest.mark.parametrize("border", SOBEL_BORDERS)
@pytest.mark.parametrize("normalized", [True, False])
def test_separable_form_equals_the_3x3_convolution(border: str, normalized: bool) -> None:
    image = torch.randn(2, 8, 37, 45, generator=torch.Generator().manual_seed(3)) * 4.0
    reference = _conv_reference(image, normalized, border)
    torch.testing.assert_close(sobel_gradients(image, normalized, border), reference, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(sobel_magnitude(image, normalized, border), reference.abs().sum(-3),
                               atol=1e-5, rtol=1e-6)


class TestSobel:
    def test_smoke(self, dtype: torch.dtype) -> None:
        out = sobel_magnitude(torch.rand(1, 2, 4, 5, dtype=dtype))
        assert out.dtype == dtype and (out >= 0).all()

    def test_cardinality(self) -> None:
        assert sobel_gradients(torch.rand(2, 3, 5, 7)).shape == (2, 3, 2, 5, 7)
        assert sobel_gradients(torch.rand(3, 5, 7)).shape == (3, 2, 5, 7)
        assert sobel_magnitude(torch.rand(2, 2, 3, 5, 7)).shape == (2, 2, 3, 5, 7)
        assert sobel_magnitude(torch.rand(1, 1, 1, 1)).shape == (1, 1, 1, 1)

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match=r"image: expected layout \(\*, C, H, W\)"):
            sobel_magnitude(torch.rand(4, 5))
        with pytest.raises(TypeError, match="floating-point"):
            sobel_magnitude(torch.ones(1, 1, 3, 3, dtype=torch.uint8))
        with pytest.raises(ValueError, match="Unknown border 'wrap'"):
            sobel_gradients(torch.rand(1, 1, 3, 3), border="wrap")
        with pytest.raises(ValueError, match="supported borders"):
            Sobel(border="circular")
        assert SOBEL_BORDERS == ("replicate", "reflect", "zeros")

    def test_ramp_hand_values(self, dtype: torch.dtype) -> None:
        grads = sobel_gradients(_x_ramp(4, 6, dtype))[0, 0]
        gx, gy = grads[0], grads[1]
        # interior: (x+1 - (x-1)) * (1 + 2 + 1) / 8 = 1; replicate border: one-sided, half of it
        expected_gx = torch.tensor([0.5, 1.0, 1.0, 1.0, 1.0, 0.5], dtype=dtype).expand(4, 6)
        torch.testing.assert_close(gx, expected_gx)
        torch.testing.assert_close(gy, torch.zeros(4, 6, dtype=dtype))
        # the transposed ramp swaps the roles; unnormalised kernels are 8 times larger
        grads_t = sobel_gradients(_x_ramp(4, 6, dtype).transpose(-1, -2), normalized=False)[0, 0]
        torch.testing.assert_close(grads_t[1], 8 * expected_gx.t())
        torch.testing.assert_close(grads_t[0], torch.zeros(6, 4, dtype=dtype))

    def test_step_hand_values(self) -> None:
        step = torch.zeros(1, 1, 5, 6)
        step[..., 3:] = 1.0
        mag = sobel_magnitude(step)[0, 0]
        expected_row = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0, 0.0])
        torch.testing.assert_close(mag, expected_row.expand(5, 6))
        # a falling step has the opposite sign in Gx and the same magnitude
        gx = sobel_gradients(1.0 - step)[0, 0, 0]
        torch.testing.assert_close(gx, -expected_row.expand(5, 6))

    def test_borders(self) -> None:
        ones = torch.ones(1, 1, 4, 5)
        assert float(sobel_magnitude(ones).abs().max()) == 0.0  # replicate: no edge at the border
        zeros_border = sobel_magnitude(ones, border="zeros")[0, 0]
        # edge pixel: one full kernel column (1 + 2 + 1) / 8 missing; corner: 3/8 in x and in y
        assert float(zeros_border[1, 0]) == pytest.approx(0.5)
        assert float(zeros_border[0, 0]) == pytest.approx(0.75)
        assert float(zeros_border[1:-1, 1:-1].abs().max()) == 0.0
        # reflect mirrors the ramp at the border, so the one-sided differences cancel there
        reflect_gx = sobel_gradients(_x_ramp(3, 5, torch.float32), border="reflect")[0, 0, 0]
        torch.testing.assert_close(reflect_gx[:, [0, 4]], torch.zeros(3, 2))
        torch.testing.assert_close(reflect_gx[:, 1:4], torch.ones(3, 3))

    def test_channels_and_batch_are_independent(self) -> None:
        x = torch.rand(2, 3, 6, 7)
        out = sobel_magnitude(x)
        torch.testing.assert_close(out[1, 2:3], sobel_magnitude(x[1:2, 2:3])[0])

    def test_noncontiguous(self) -> None:
        x = torch.rand(1, 2, 7, 5).transpose(-1, -2)
        assert not x.is_contiguous()
        torch.testing.assert_close(sobel_magnitude(x), sobel_magnitude(x.contiguous()))

    def test_gradcheck(self) -> None:
        # away from |g| = 0, where the L1 magnitude has a kink
        x = (torch.rand(1, 1, 5, 6, dtype=torch.float64) + torch.arange(6, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(sobel_gradients, (x,), fast_mode=True)
        assert torch.autograd.gradcheck(lambda t: sobel_magnitude(t, border="zeros"), (x,), fast_mode=True)

    def test_module(self) -> None:
        x = torch.rand(2, 3, 6, 5)
        module = Sobel(normalized=False, border="zeros")
        torch.testing.assert_close(module(x), sobel_magnitude(x, normalized=False, border="zeros"))
        assert list(module.parameters()) == []
        assert "normalized=False, border='zeros'" in repr(module)
