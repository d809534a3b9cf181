"""Loss terms: zeros where they must be, hand-checked values, gradients, perception loss."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models.base import FusionSegOutput
from ivf_training.losses import (
    FusionSegLoss,
    PerceptionLoss,
    PerceptionWeightsError,
    color_loss,
    gradient_loss,
    intensity_loss,
    segmentation_loss,
    sobel_magnitude,
    ssim,
    ssim_loss,
)


def _pair(seed: int = 0, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g), torch.rand(2, 1, size, size, generator=g)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]


class TestIntensity:
    def test_zero_when_fused_is_the_max_target(self) -> None:
        rgb, ir = _pair()
        target = torch.maximum(_luma(rgb), ir)
        assert float(intensity_loss(target, _luma(rgb), ir)) == pytest.approx(0.0, abs=1e-7)

    def test_hand_value(self) -> None:
        y_f = torch.tensor([[[[0.0, 1.0]]]])
        y_vi = torch.tensor([[[[0.2, 0.4]]]])
        ir = torch.tensor([[[[0.6, 0.1]]]])
        # targets 0.6, 0.4 → |0 − 0.6| + |1 − 0.4| = 1.2 over 2 pixels
        assert float(intensity_loss(y_f, y_vi, ir)) == pytest.approx(0.6)


class TestSSIM:
    def test_identical_is_one(self) -> None:
        x = torch.rand(2, 1, 16, 16)
        assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)

    def test_constant_images_hand_value(self) -> None:
        # σ = 0 everywhere: SSIM = (2ab + C1) / (a² + b² + C1) · (C2 / C2)
        a, b, c1 = 0.2, 0.6, 0.01**2
        x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
        assert float(ssim(x, y)[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)

    def test_ssim_loss_zero_only_when_both_sources_match(self) -> None:
        x = torch.rand(1, 1, 16, 16)
        assert float(ssim_loss(x, x, x)) == pytest.approx(0.0, abs=1e-6)
        assert float(ssim_loss(x, x, torch.rand(1, 1, 16, 16))) > 0.2

    def test_small_image_error(self) -> None:
        with pytest.raises(ValueError, match="at least 11x11"):
            ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))

    def test_gradcheck(self) -> None:
        x = torch.rand(1, 1, 11, 12, dtype=torch.float64, requires_grad=True)
        y = torch.rand(1, 1, 11, 12, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda t: ssim(t, y), (x,), fast_mode=True)


class TestGradient:
    def test_step_edge_hand_value(self) -> None:
        img = torch.zeros(1, 1, 5, 6)
        img[..., 3:] = 1.0
        mag = sobel_magnitude(img)
        # normalised Sobel across a unit step: the two columns next to the edge see 4/8 = 0.5
        assert torch.allclose(mag[0, 0, :, 2], torch.full((5,), 0.5))
        assert torch.allclose(mag[0, 0, :, 3], torch.full((5,), 0.5))
        assert float(mag[0, 0, :, [0, 5]].abs().max()) == 0.0  # replicate padding: no border edges

    def test_zero_when_fused_has_the_max_gradients(self) -> None:
        rgb, _ = _pair()
        flat_ir = torch.full((2, 1, 24, 24), 0.3)
        assert float(gradient_loss(_luma(rgb), _luma(rgb), flat_ir)) == pytest.approx(0.0, abs=1e-7)
        assert float(gradient_loss(torch.zeros_like(flat_ir), _luma(rgb), flat_ir)) > 0.01


class TestColor:
    def test_zero_for_same_colours_and_hand_value(self) -> None:
        rgb, _ = _pair()
        assert float(color_loss(rgb, rgb)) == 0.0
        red = torch.zeros(1, 3, 2, 2)
        red[:, 0] = 1.0
        gray = torch.full((1, 3, 2, 2), 0.299)  # same luminance as pure red
        # Cb: (0 − 0.299)·0.564, Cr: (1 − 0.299)·0.713 → mean |ΔCbCr| over both channels
        expected = (0.299 * 0.564 + 0.701 * 0.713) / 2
        assert float(color_loss(gray, red)) == pytest.approx(expected, rel=1e-5)


class TestSegmentation:
    def test_matches_cross_entropy_and_ignores_255(self) -> None:
        logits = torch.randn(2, 4, 5, 5)
        labels = torch.randint(0, 4, (2, 5, 5))
        labels[0, :2] = 255
        expected = F.cross_entropy(logits, labels, ignore_index=255)
        assert float(segmentation_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-5)

    def test_all_ignored_is_zero_not_nan(self) -> None:
        logits = torch.randn(1, 4, 3, 3, requires_grad=True)
        loss = segmentation_loss(logits, torch.full((1, 3, 3), 255))
        loss.backward()
        assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()


class TestFusionSegLoss:
    def test_terms_total_and_gradients(self) -> None:
        rgb, ir = _pair(size=16)
        fused = torch.rand(2, 3, 16, 16, requires_grad=True)
        logits = torch.randn(2, 9, 16, 16, requires_grad=True)
        labels = torch.randint(0, 9, (2, 16, 16))
        loss_fn = FusionSegLoss(seg=2.0, fusion=0.5, intensity=1.0, ssim=1.0, gradient=15.0, color=1.0)
        total, terms = loss_fn(FusionSegOutput(fused=fused, logits=logits), rgb, ir, labels)
        expected = 2.0 * terms["seg_ce"] + 0.5 * (terms["fus_intensity"] + terms["fus_ssim"]
                                                  + 15.0 * terms["fus_gradient"] + terms["fus_color"])
        assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5)
        assert set(terms) == {"seg_ce", "fus_intensity", "fus_ssim", "fus_gradient", "fus_color", "total"}
        assert not any(t.requires_grad for t in terms.values())
        total.backward()
        assert fused.grad is not None and float(fused.grad.abs().sum()) > 0
        assert logits.grad is not None and float(logits.grad.abs().sum()) > 0

    def test_fusion_only_output_skips_segmentation(self) -> None:
        rgb, ir = _pair(size=16)
        _, terms = FusionSegLoss()(FusionSegOutput(fused=rgb, logits=None), rgb, ir,
                                   torch.zeros(2, 16, 16, dtype=torch.long))
        assert "seg_ce" not in terms and terms["fus_color"] == 0.0


class TestPerceptionLoss:
    def test_skipped_without_weights(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO):
            per = PerceptionLoss(None)
        assert not per.enabled
        assert "perception-enhanced loss skipped" in caplog.text
        rgb, ir = _pair(size=16)
        _, terms = FusionSegLoss(perception=per)(FusionSegOutput(fused=rgb, logits=None), rgb, ir)
        assert "per_entropy" not in terms

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "resnet50.pth"
        with pytest.raises(PerceptionWeightsError) as exc:
            PerceptionLoss(path)
        msg = str(exc.value)
        assert f"ResNet-50 weights not found: {path}" in msg and "set it to null" in msg

    def test_corrupt_file_is_a_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "resnet50.safetensors"
        path.write_bytes(b"not a weight file")
        with pytest.raises(PerceptionWeightsError, match="corrupt or not a plain state dict"):
            PerceptionLoss(path)

    def test_mismatched_state_dict(self, tmp_path: Path) -> None:
        path = tmp_path / "other.pth"
        torch.save({"conv.weight": torch.zeros(1)}, path)
        with pytest.raises(PerceptionWeightsError, match="do not fit torchvision's resnet50"):
            PerceptionLoss(path)

    def test_loads_local_weights_and_backpropagates(self, tmp_path: Path) -> None:
        from torchvision.models import resnet50

        path = tmp_path / "resnet50.pth"
        torch.manual_seed(0)
        torch.save({"state_dict": resnet50(weights=None).state_dict()}, path)  # a wrapped checkpoint
        per = PerceptionLoss(path)
        assert per.enabled
        per.train()
        assert not per.net.training  # the frozen network stays in eval mode
        rgb, ir = _pair(size=32)
        fused = rgb.clone().requires_grad_()
        total, terms = FusionSegLoss(perception=per, perception_weight=1.0)(
            FusionSegOutput(fused=fused, logits=None), rgb, ir
        )
        assert 0.0 <= float(terms["per_entropy"]) <= 1.0 and float(terms["per_texture"]) >= 0.0
        total.backward()
        assert float(fused.grad.abs().sum()) > 0
        assert all(p.grad is None for p in per.net.parameters())
