"""CMFS's FSC block and the ops it is built from: DWT/IDWT, FFT amplitude filter, channel attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivf_perception.checks import ShapeError
from ivf_perception.models.cmfs.fsc import FrequencySpatialCollaboration
from ivf_perception.models.layers import (
    SS2D,
    ChannelAttention,
    ChannelAttentionBlock,
    FFTAmplitudeFilter,
    fft_amplitude_filter,
)
from ivf_perception.models.ops import DWT2, IDWT2, dwt2, idwt2, pack_subbands, unpack_subbands

ODD_AND_EVEN = [(8, 8), (5, 7), (1, 1), (15, 22), (3, 2)]


def tiny_fsc(**kwargs: object) -> FrequencySpatialCollaboration:
    return FrequencySpatialCollaboration(8, d_state=2, ssm_ratio=1.0, **kwargs)


class TestWavelet:
    @pytest.mark.parametrize("h, w", ODD_AND_EVEN)
    def test_round_trip(self, h: int, w: int) -> None:
        x = torch.randn(2, 3, h, w)
        yl, yh = dwt2(x, levels=2, wave="haar")
        torch.testing.assert_close(idwt2(yl, yh, "haar", size=(h, w)), x, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("h, w", [(5, 7), (15, 22)])
    def test_cardinality_odd_sizes_are_padded_to_the_level_multiple(self, h: int, w: int) -> None:
        yl, yh = dwt2(torch.randn(1, 2, h, w), levels=2)
        hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
        assert yl.shape == (1, 2, hp // 4, wp // 4)
        assert [t.shape for t in yh] == [(1, 2, 3, hp // 2, wp // 2), (1, 2, 3, hp // 4, wp // 4)]
        assert idwt2(yl, yh).shape == (1, 2, hp, wp)

    def test_haar_by_hand(self) -> None:
        x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
        yl, (yh,) = dwt2(x, levels=1)
        torch.testing.assert_close(yl.flatten(), torch.tensor([11.0 / 2]))
        # pytorch_wavelets' band order (LH, HL, HH): row difference, column difference, diagonal.
        torch.testing.assert_close(yh.flatten(), torch.tensor([-5.0 / 2, -3.0 / 2, 1.0 / 2]))

    def test_pack_unpack(self) -> None:
        x = torch.randn(2, 3, 8, 12)
        yl, yh = dwt2(x, levels=2)
        packed = pack_subbands(yl, yh)
        assert packed.shape == (2, 3, 8, 12)
        torch.testing.assert_close(packed[..., :2, :3], yl)
        torch.testing.assert_close(packed[..., :4, 6:], yh[0][:, :, 0])  # finest LH top right
        torch.testing.assert_close(packed[..., 2:4, 3:6], yh[1][:, :, 2])  # coarse HH
        yl2, yh2 = unpack_subbands(packed, 2)
        torch.testing.assert_close(yl2, yl)
        for a, b in zip(yh2, yh):
            torch.testing.assert_close(a, b)

    def test_module_equals_function_and_noncontiguous(self) -> None:
        x = torch.randn(1, 7, 5, 2).permute(0, 3, 2, 1)  # (1, 2, 5, 7), non-contiguous
        yl, yh = DWT2(levels=2)(x)
        ref_l, ref_h = dwt2(x.contiguous(), levels=2)
        torch.testing.assert_close(yl, ref_l)
        torch.testing.assert_close(IDWT2()(yl, yh, size=(5, 7)), idwt2(ref_l, ref_h, size=(5, 7)))
        torch.testing.assert_close(IDWT2()(yl, yh, size=(5, 7)), x)

    def test_gradcheck(self) -> None:
        x = torch.randn(1, 1, 3, 5, dtype=torch.float64, requires_grad=True)

        def fn(t: torch.Tensor) -> torch.Tensor:
            yl, yh = dwt2(t, levels=2)
            return idwt2(yl * 2.0, [h * 0.5 for h in yh], size=(3, 5))

        assert torch.autograd.gradcheck(fn, (x,))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="Unknown wavelet 'haar2'"):
            dwt2(torch.zeros(1, 1, 4, 4), levels=1, wave="haar2")
        with pytest.raises(ValueError, match="Unknown wavelet 'db2'; this op implements 'haar' only"):
            IDWT2(wave="db2")
        with pytest.raises(ValueError, match="levels must be a positive int, got 0"):
            DWT2(levels=0)
        with pytest.raises(ShapeError, match=r"packed: expected H and W divisible by 2\*\*levels = 4"):
            unpack_subbands(torch.zeros(1, 1, 6, 8), 2)
        with pytest.raises(ValueError, match="at least one level"):
            idwt2(torch.zeros(1, 1, 2, 2), [])
        with pytest.raises(ShapeError, match=r"size: expected at most the reconstructed \(4, 4\)"):
            idwt2(*dwt2(torch.zeros(1, 1, 4, 4)), size=(5, 4))


class TestFFTAmplitudeFilter:
    @pytest.mark.parametrize("h, w", [(6, 8), (5, 7), (1, 1), (4, 9)])
    def test_identity_amplitude_reconstructs(self, h: int, w: int) -> None:
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(fft_amplitude_filter(x, lambda a: a), x, atol=1e-5, rtol=1e-5)

    def test_phase_is_kept(self) -> None:
        x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
        y = fft_amplitude_filter(x, torch.ones_like)  # flat amplitude, original phase
        spec_x, spec_y = torch.fft.rfft2(x), torch.fft.rfft2(y)
        torch.testing.assert_close(spec_y.abs(), torch.ones_like(spec_y.abs()))
        torch.testing.assert_close(spec_y, spec_x / spec_x.abs())

    def test_module_with_identity_weights_reconstructs(self) -> None:
        module = FFTAmplitudeFilter(4)
        with torch.no_grad():
            for conv in (module.amplitude[0], module.amplitude[2]):
                conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
                conv.bias.zero_()
        x = torch.randn(2, 4, 5, 6)
        torch.testing.assert_close(module(x), x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(module(x), fft_amplitude_filter(x, module.amplitude, "backward"))

    def test_gradients_finite_at_zero_frequency_bins(self) -> None:
        x = torch.ones(1, 2, 4, 5, requires_grad=True)  # every bin but DC is exactly zero
        FFTAmplitudeFilter(2)(x).square().sum().backward()
        assert torch.isfinite(x.grad).all()

    def test_gradcheck(self) -> None:
        x = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: fft_amplitude_filter(t, lambda a: a.sqrt() + a), (x,))

    @pytest.mark.parametrize("zero_bins", [False, True])
    def test_inference_equals_the_polar_angle_form_and_training_keeps_it(self, zero_bins: bool) -> None:
        """Without gradients X/|X| replaces polar(amplitude, angle(X)) (outputs within 1e-5); with
        gradients the polar form runs, so training's gradients are the reference's exactly."""
        x = torch.randn(2, 4, 24, 31, generator=torch.Generator().manual_seed(5))
        if zero_bins:
            x[0] = 1.0  # every bin but DC exactly zero
        module = FFTAmplitudeFilter(4)

        def reference(t: torch.Tensor) -> torch.Tensor:
            spectrum = torch.fft.rfft2(t)
            return torch.fft.irfft2(torch.polar(module.amplitude(spectrum.abs()), spectrum.angle()), s=t.shape[-2:])

        with torch.inference_mode():
            torch.testing.assert_close(module(x), reference(x), atol=1e-5, rtol=1e-5)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = module(a), reference(b)
        torch.testing.assert_close(out, ref, atol=0.0, rtol=0.0)
        out.square().sum().backward()
        ref.square().sum().backward()
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, atol=0.0, rtol=0.0)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"Unknown FFT norm 'unit'; supported norms"):
            FFTAmplitudeFilter(2, norm="unit")
        with pytest.raises(ShapeError, match=r"amplitude_fn\(amplitude\): expected C=2"):
            fft_amplitude_filter(torch.zeros(1, 2, 4, 4), lambda a: a[:, :1])


class TestChannelAttention:
    def test_numeric(self) -> None:
        module = ChannelAttention(4, squeeze_factor=2)
        x = torch.randn(2, 4, 3, 5)
        pooled = x.mean(dim=(2, 3))
        fc1, fc2 = module.attention[1], module.attention[3]
        hidden = torch.relu(pooled @ fc1.weight.flatten(1).T + fc1.bias)
        weight = torch.sigmoid(hidden @ fc2.weight.flatten(1).T + fc2.bias)
        torch.testing.assert_close(module(x), x * weight[:, :, None, None])

    def test_small_widths_and_activation(self) -> None:
        module = ChannelAttention(3, squeeze_factor=16, act_layer=nn.GELU)
        assert module.attention[1].out_channels == 1 and isinstance(module.attention[2], nn.GELU)
        block = ChannelAttentionBlock(8)
        assert block.body[0].out_channels == 2 and block(torch.randn(2, 8, 5, 7)).shape == (2, 8, 5, 7)

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match="x: expected C=4"):
            ChannelAttention(4)(torch.zeros(1, 3, 2, 2))
        with pytest.raises(ValueError, match="squeeze_factor must be >= 1"):
            ChannelAttention(4, squeeze_factor=0)


class TestFrequencySpatialCollaboration:
    @pytest.mark.parametrize("h, w", [(7, 9), (15, 22), (1, 1), (8, 8), (30, 40)])
    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("train", [True, False])
    def test_cardinality(self, h: int, w: int, batch: int, train: bool) -> None:
        model = tiny_fsc(drop_path=0.1).train(train)
        with torch.set_grad_enabled(train):
            out = model(torch.randn(batch, 8, h, w))
        assert out.shape == (batch, 8, h, w) and torch.isfinite(out).all()

    def test_large_odd_map_eval(self) -> None:
        model = FrequencySpatialCollaboration(4, d_state=2, ssm_ratio=1.0).eval()
        with torch.inference_mode():
            assert model(torch.randn(2, 4, 60, 81)).shape == (2, 4, 60, 81)

    def test_backward_reaches_every_parameter(self) -> None:
        # 48 channels: CAB's squeeze-excitation then has 4 hidden ReLUs (a single one can be dead).
        model = FrequencySpatialCollaboration(48, d_state=2, ssm_ratio=1.0)
        model(torch.randn(2, 48, 7, 9)).square().sum().backward()
        missing = [n for n, p in model.named_parameters()
                   if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert not missing, f"no gradient reached {missing}"

    def test_eval_deterministic_and_batch_independent(self) -> None:
        model = tiny_fsc(drop_path=0.5).eval()
        x = torch.randn(3, 8, 7, 9)
        out = model(x)
        torch.testing.assert_close(model(x), out)
        torch.testing.assert_close(model(x[1:2]), out[1:2], atol=1e-5, rtol=1e-5)

    def test_drop_path_is_stochastic_in_training(self) -> None:
        model = tiny_fsc(drop_path=0.5).train()
        x = torch.randn(4, 8, 4, 4)
        assert not torch.allclose(model(x), model(x))

    def test_structure(self) -> None:
        model = FrequencySpatialCollaboration(16, d_state=8, window_size=2)
        assert isinstance(model.wavelet_ssm, SS2D) and model.wavelet_ssm.scan_order == "window"
        assert model.wavelet_ssm.window_size == 2 and model.spatial_ssm.scan_order == "cross"
        assert model.spatial_ssm.d_inner == 64 and model.spatial_ssm.d_state == 8
        assert model.freq_filter.amplitude[0].in_channels == 32
        assert model.fuse[1].groups == 16 and model.channel_attn.attention[1].out_channels == 4

    def test_paper_parameter_counts(self) -> None:
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        assert count(FrequencySpatialCollaboration(96, d_state=8)) == 512_704
        assert count(FrequencySpatialCollaboration(192, d_state=16)) == 2_014_592

    def test_device_dtype(self) -> None:
        model = tiny_fsc(device="cpu", dtype=torch.float64)
        assert {p.dtype for p in model.parameters()} == {torch.float64}
        assert model(torch.randn(1, 8, 5, 6, dtype=torch.float64)).dtype == torch.float64

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match="x: expected C=8"):
            tiny_fsc()(torch.zeros(1, 4, 5, 5))
        with pytest.raises(ValueError, match="dwt_levels must be a positive int, got 0"):
            tiny_fsc(dwt_levels=0)
        with pytest.raises(ValueError, match="Unknown scan_backend 'fast'"):
            tiny_fsc(scan_backend="fast")
