"""Loss terms: zeros where they must be, hand-checked values, gradients, S4Fusion's ResNet-50
terms (ω weights against a hand computation, perception entropy, the real file loader)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.checks import ShapeError
from ivf_perception.models.base import FusionSegOutput
from ivf_training.losses import (
    FusionSegLoss,
    PerceptionWeightsError,
    ResNet50Probe,
    color_loss,
    gradient_loss,
    information_measure,
    intensity_loss,
    load_resnet50_probe,
    perception_entropy,
    segmentation_loss,
    sobel_magnitude,
    source_weights,
    ssim,
    ssim_loss,
    texture_loss,
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

    def test_source_weighted_hand_value(self) -> None:
        """Paper form: Σ_s ω_s L1(Y_F, I_s) per image, then the batch mean."""
        y_f = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.5]]]])
        y_vi = torch.tensor([[[[0.2, 0.4]]], [[[0.5, 0.5]]]])
        ir = torch.tensor([[[[0.6, 0.1]]], [[[0.1, 0.9]]]])
        w_ir, w_vi = torch.tensor([0.25, 0.5]), torch.tensor([0.75, 0.5])
        # image 0: L1 to IR (0.6 + 0.9)/2 = 0.75, to VI (0.2 + 0.6)/2 = 0.4 → 0.25·0.75 + 0.75·0.4 = 0.4875
        # image 1: L1 to IR 0.4, to VI 0 → 0.5·0.4 = 0.2
        assert float(intensity_loss(y_f, y_vi, ir, (w_ir, w_vi))) == pytest.approx((0.4875 + 0.2) / 2)


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

    def test_source_weighted_ssim(self) -> None:
        x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
        half = torch.full((2,), 0.5)
        # equal weights ½ are our unweighted form; all weight on one source ignores the other
        torch.testing.assert_close(ssim_loss(x, y, x, (half, half)), ssim_loss(x, y, x))
        only_ir = (torch.ones(2), torch.zeros(2))
        assert float(ssim_loss(x, y, x, only_ir)) == pytest.approx(0.0, abs=1e-6)
        expected = (1 - ssim(x, y)).mean()
        assert float(ssim_loss(x, y, x, (torch.zeros(2), torch.ones(2)))) == pytest.approx(float(expected), rel=1e-6)

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

    def test_raw_form_is_the_public_operator(self) -> None:
        """Public loss module: integer Sobel kernels, zero padding (8× the normalised values, and
        the image border is an edge)."""
        img = torch.zeros(1, 1, 5, 6)
        img[..., 3:] = 1.0
        raw = sobel_magnitude(img, "raw")
        assert torch.allclose(raw[0, 0, 1:-1, 2], torch.full((3,), 4.0))
        assert float(raw[0, 0, 2, 5]) == 4.0  # zero padding: the right border of the ones is an edge
        flat = torch.full((1, 1, 4, 4), 0.5)
        assert float(gradient_loss(flat, flat, flat, "raw")) == 0.0
        with pytest.raises(ValueError, match="Sobel form must be one of raw, normalized"):
            sobel_magnitude(img, "scharr")  # type: ignore[arg-type]

    def test_texture_only_counts_edges_stronger_than_both_sources(self) -> None:
        rgb, ir = _pair()
        assert float(texture_loss(_luma(rgb), _luma(rgb), ir)) == 0.0
        noisy = _luma(rgb) + 0.5 * torch.rand(2, 1, 24, 24)
        assert float(texture_loss(noisy, torch.full_like(ir, 0.3), torch.full_like(ir, 0.3))) > 0.05

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

    def test_class_weights_give_the_weighted_mean(self) -> None:
        logits = torch.randn(2, 3, 4, 4)
        labels = torch.randint(0, 3, (2, 4, 4))
        labels[1, 0] = 255
        weights = torch.tensor([0.1, 1.0, 3.0])
        expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
        assert float(segmentation_loss(logits, labels, weights)) == pytest.approx(float(expected), rel=1e-5)
        # hand form: Σ w_y ℓ / Σ w_y over labelled pixels
        pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
        kept = labels != 255
        hand = (weights[labels[kept]] * pixel[kept]).sum() / weights[labels[kept]].sum()
        assert float(segmentation_loss(logits, labels, weights)) == pytest.approx(float(hand), rel=1e-5)

    def test_class_weights_must_match_the_classes(self) -> None:
        with pytest.raises(ShapeError):
            segmentation_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(4))


class TestFusionSegLoss:
    def test_class_weights_reach_the_cross_entropy(self) -> None:
        rgb, ir = _pair(size=16)
        logits = torch.randn(2, 3, 16, 16)
        labels = torch.randint(0, 3, (2, 16, 16))
        weights = [0.2, 1.0, 2.0]
        _, terms = FusionSegLoss(seg_class_weights=weights)(FusionSegOutput(fused=rgb, logits=logits), rgb, ir, labels)
        assert float(terms["seg_ce"]) == pytest.approx(
            float(segmentation_loss(logits, labels, torch.tensor(weights))), rel=1e-6)
        _, plain = FusionSegLoss()(FusionSegOutput(fused=rgb, logits=logits), rgb, ir, labels)
        assert float(plain["seg_ce"]) != pytest.approx(float(terms["seg_ce"]), rel=1e-3)

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


def _tiny_features(img: torch.Tensor) -> list[torch.Tensor]:
    """A tiny seeded random feature extractor standing in for ResNet-50's four stages."""
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(4, 1, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    f1 = torch.relu(F.conv2d(img, w1, padding=1))
    return [f1, torch.relu(F.conv2d(f1, w2, stride=2, padding=1))]


def _hand_information(features: list[torch.Tensor]) -> torch.Tensor:
    """U2Fusion's information measure written out with explicit loops over images and channels."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    out = []
    for b in range(features[0].shape[0]):
        per_map = []
        for f in features:
            vals = []
            for c in range(f.shape[1]):
                x = F.pad(f[b, c], (1, 1, 1, 1))  # zero padding
                h, w = f.shape[-2:]
                gx = sum(kx[i, j] * x[i:i + h, j:j + w] for i in range(3) for j in range(3))
                gy = sum(kx.T[i, j] * x[i:i + h, j:j + w] for i in range(3) for j in range(3))
                vals.append(((gx.abs() + gy.abs()) ** 2).mean())
            per_map.append(torch.stack(vals).mean())
        out.append(torch.stack(per_map).mean())
    return torch.stack(out)


class TestSourceWeights:
    def test_omega_matches_a_hand_computation(self) -> None:
        g = torch.Generator().manual_seed(0)
        ir = torch.rand(2, 1, 12, 12, generator=g)
        vi = torch.rand(2, 1, 12, 12, generator=g) * 0.3  # less contrast: less information
        f_ir, f_vi = _tiny_features(ir), _tiny_features(vi)
        g_ir, g_vi = _hand_information(f_ir), _hand_information(f_vi)
        torch.testing.assert_close(information_measure(f_ir), g_ir, rtol=1e-5, atol=1e-6)
        c = 10.0
        w_ir, w_vi = source_weights(f_ir, f_vi, c)
        expected_ir = torch.exp(g_ir / c) / (torch.exp(g_ir / c) + torch.exp(g_vi / c))
        torch.testing.assert_close(w_ir, expected_ir, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w_ir + w_vi, torch.ones(2))
        assert (w_ir > w_vi).all()  # the richer source gets the larger weight
        w_ir_big_c, _ = source_weights(f_ir, f_vi, 1e9)
        torch.testing.assert_close(w_ir_big_c, torch.full((2,), 0.5))  # large c: equal weights

    def test_no_gradient_flows_into_the_weights(self) -> None:
        ir = torch.rand(1, 1, 8, 8, requires_grad=True)
        w_ir, _ = source_weights(_tiny_features(ir), _tiny_features(torch.rand(1, 1, 8, 8)), 1.0)
        assert not w_ir.requires_grad
        with pytest.raises(ValueError, match="must be > 0"):
            source_weights(_tiny_features(ir), _tiny_features(ir), 0.0)

    def test_entropy_in_nats(self) -> None:
        assert float(perception_entropy(torch.zeros(3, 1000))) == pytest.approx(math.log(1000), rel=1e-6)
        peaked = torch.zeros(1, 10)
        peaked[0, 3] = 50.0
        assert float(perception_entropy(peaked)) == pytest.approx(0.0, abs=1e-6)


def _random_resnet50_file(tmp_path: Path) -> Path:
    """A seeded random torchvision ResNet-50 saved as a wrapped .pth checkpoint (real weights are
    a 100 MB download this machine cannot make; the loader and the arithmetic are the same)."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": resnet50(weights=None).state_dict()}, path)
    return path


class TestResNet50Probe:
    def test_skipped_without_weights(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.INFO):
            assert load_resnet50_probe(None) is None
        assert "perception-enhanced loss skipped" in caplog.text

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "resnet50.pth"
        with pytest.raises(PerceptionWeightsError) as exc:
            load_resnet50_probe(path)
        msg = str(exc.value)
        assert f"ResNet-50 weights not found: {path}" in msg and "set it to null" in msg
        assert "ResNet50_Weights.IMAGENET1K_V2" in msg

    def test_corrupt_file_is_a_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "resnet50.safetensors"
        path.write_bytes(b"not a weight file")
        with pytest.raises(PerceptionWeightsError, match="corrupt or not a plain state dict"):
            ResNet50Probe.from_file(path)

    def test_mismatched_state_dict(self, tmp_path: Path) -> None:
        path = tmp_path / "other.pth"
        torch.save({"conv.weight": torch.zeros(1)}, path)
        with pytest.raises(PerceptionWeightsError, match="do not fit torchvision's resnet50"):
            ResNet50Probe.from_file(path)

    def test_paper_loss_with_a_loaded_resnet(self, tmp_path: Path) -> None:
        """The real loader on a seeded random network: ω from its four stages, the entropy on
        the fused image, gradients reach the fused image only, the network stays frozen."""
        probe = ResNet50Probe.from_file(_random_resnet50_file(tmp_path))
        probe.train()
        assert not probe.net.training  # the frozen network stays in eval mode
        rgb, ir = _pair(size=32)
        logits, feats = probe(ir)
        assert logits.shape == (2, 1000) and [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
        fused = rgb.clone().requires_grad_()
        loss_fn = FusionSegLoss(intensity=1.0, ssim=15.0, gradient=15.0, color=0.0, source_weights="resnet",
                                omega_c=3200.0, gradient_sobel="raw", probe=probe, perception_weight=15.0,
                                perception_texture=0.0)
        total, terms = loss_fn(FusionSegOutput(fused=fused, logits=None), rgb, ir)
        y_f, y_vi = _luma(rgb), _luma(rgb)
        w_ir, w_vi = source_weights(probe(ir)[1], probe(y_vi)[1], 3200.0)
        assert float(terms["omega_ir"]) == pytest.approx(float(w_ir.mean()), rel=1e-5)
        expected = (intensity_loss(y_f, y_vi, ir, (w_ir, w_vi)) + 15 * ssim_loss(y_f, y_vi, ir, (w_ir, w_vi))
                    + 15 * gradient_loss(y_f, y_vi, ir, "raw") + 15 * perception_entropy(probe(rgb)[0]))
        assert float(total.detach()) == pytest.approx(float(expected), rel=1e-4)
        assert "per_texture" not in terms and 0.0 <= float(terms["per_entropy"]) <= math.log(1000)
        total.backward()
        assert float(fused.grad.abs().sum()) > 0
        assert all(p.grad is None for p in probe.net.parameters())

    def test_resnet_weighting_needs_the_probe(self) -> None:
        with pytest.raises(ValueError, match="needs the ResNet-50 probe"):
            FusionSegLoss(source_weights="resnet")
