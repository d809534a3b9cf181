"""MAFS fusion decoder: the invertible blocks (eqs. 6–7) invert exactly; the decoder's output contract."""

from __future__ import annotations

import pytest
import torch

from ivf_perception.checks import ShapeError
from ivf_perception.models.mafs.invertible import InvertibleBlock, InvertibleConv1x1, InvertibleFusionDecoder


def _scrambled(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter away from its near-identity initialisation, so inverting is a real test.

    0.1 is far beyond what training does to these weights; much larger noise makes the coupling
    subnets so steep that the inverse amplifies rounding errors (an ill-conditioned, not a wrong,
    inverse).
    """
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


class TestInvertibleConv1x1:
    def test_inverse(self) -> None:
        conv = _scrambled(InvertibleConv1x1(6, dtype=torch.float64), 0.1)
        x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
        y = conv(x)
        assert not torch.allclose(y, x)
        torch.testing.assert_close(conv.inverse(y), x, atol=1e-10, rtol=0)

    def test_weight_keeps_its_lu_structure(self) -> None:
        """Only the strict triangles of ``lower``/``upper`` count; |det W| = exp(Σ log|s|)."""
        conv = _scrambled(InvertibleConv1x1(4, dtype=torch.float64))
        w = conv.weight()
        with torch.no_grad():
            conv.lower.add_(torch.triu(torch.full((4, 4), 5.0, dtype=torch.float64)))
            conv.upper.add_(torch.tril(torch.full((4, 4), 5.0, dtype=torch.float64)))
        torch.testing.assert_close(conv.weight(), w)
        torch.testing.assert_close(torch.linalg.det(w).abs().log(), conv.log_s.sum().detach())

    def test_starts_as_a_rotation(self) -> None:
        w = InvertibleConv1x1(8, dtype=torch.float64).weight()
        torch.testing.assert_close(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)


class TestInvertibleBlock:
    @pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
    def test_inverse(self, dtype: torch.dtype, atol: float) -> None:
        block = _scrambled(InvertibleBlock(8, 4, hidden=6, dtype=dtype))
        x = torch.randn(2, 8, 9, 11, dtype=dtype)
        y = block(x)
        assert (y - x).abs().max() > 0.1  # a real transform, not the identity
        torch.testing.assert_close(block.inverse(y), x, atol=atol, rtol=0)

    def test_uneven_split(self) -> None:
        block = _scrambled(InvertibleBlock(5, 2, hidden=3, dtype=torch.float64))
        x = torch.randn(1, 5, 4, 4, dtype=torch.float64)
        torch.testing.assert_close(block.inverse(block(x)), x, atol=1e-10, rtol=0)

    def test_log_scale_is_bounded_by_the_clamp(self) -> None:
        block = InvertibleBlock(4, 2, hidden=4, clamp=0.5)
        with torch.no_grad():
            for p in block.rho.parameters():
                p.mul_(100.0)
            s = block._log_scale(torch.randn(2, 2, 6, 6))
        assert s.abs().max() <= 0.5

    def test_coupling_equations(self) -> None:
        """Eq. 6–7 by hand: y1 = x1 + φ(x2), y2 = x2·exp(s(y1)) + η(y1), after the 1×1 mixing."""
        block = _scrambled(InvertibleBlock(4, 2, hidden=3, dtype=torch.float64))
        x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
        x1, x2 = block.mix(x).split(2, dim=1)
        y1 = x1 + block.phi(x2)
        y2 = x2 * torch.exp(0.8 * (2 * torch.sigmoid(block.rho(y1)) - 1)) + block.eta(y1)
        torch.testing.assert_close(block(x), torch.cat((y1, y2), dim=1))

    def test_gradcheck(self) -> None:
        block = InvertibleBlock(4, 2, hidden=2, dtype=torch.float64)
        x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x,))
        assert torch.autograd.gradcheck(block.inverse, (x,))

    def test_bad_split(self) -> None:
        with pytest.raises(ValueError, match=r"split must be in \(0, 4\), got 4"):
            InvertibleBlock(4, 4, hidden=2)


class TestInvertibleFusionDecoder:
    def test_flow_then_inverse_reconstructs_the_feature(self) -> None:
        decoder = _scrambled(InvertibleFusionDecoder(8, num_blocks=5, dtype=torch.float64))
        x = torch.randn(2, 8, 12, 10, dtype=torch.float64)
        flow = decoder.flow(x)
        assert len(flow) == 5 and all(z.shape == x.shape for z in flow)
        torch.testing.assert_close(decoder.inverse(flow[-1]), x, atol=1e-10, rtol=0)

    def test_float32_inverse_to_1e_5(self) -> None:
        decoder = InvertibleFusionDecoder(32, num_blocks=5)
        x = torch.randn(1, 32, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(decoder.inverse(decoder.flow(x)[-1]), x, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("size", [(16, 24), (7, 9)])
    def test_output_is_one_luminance_channel_in_unit_range(self, size: tuple[int, int]) -> None:
        decoder = _scrambled(InvertibleFusionDecoder(8, num_blocks=3), 1.0)
        y = decoder(torch.randn(3, 8, *size) * 5)
        assert y.shape == (3, 1, *size)
        assert y.min() >= 0 and y.max() <= 1

    def test_every_block_output_reaches_the_head(self) -> None:
        """Dense connection: the aggregation reads all blocks, so each block gets a gradient of its own."""
        decoder = InvertibleFusionDecoder(4, num_blocks=3)
        decoder(torch.randn(1, 4, 6, 6)).sum().backward()
        assert decoder.aggregate.weight.shape[1] == 4 * 3
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())

    def test_shape_errors(self) -> None:
        decoder = InvertibleFusionDecoder(8, num_blocks=2)
        with pytest.raises(ShapeError, match="feature"):
            decoder(torch.randn(1, 6, 4, 4))
        with pytest.raises(ShapeError, match="z"):
            decoder.inverse(torch.randn(1, 6, 4, 4))
        with pytest.raises(ValueError, match="num_blocks must be >= 1"):
            InvertibleFusionDecoder(8, num_blocks=0)

    def test_dtype_is_passed_down(self) -> None:
        decoder = InvertibleFusionDecoder(4, num_blocks=2, dtype=torch.float64)
        assert {t.dtype for t in [*decoder.parameters(), *decoder.buffers()]} == {torch.float64}
