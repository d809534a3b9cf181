"""MAFS objectives: mask statistics, masked reconstruction, targets, OHEM, BCE/Dice, KD, α-fair,
DWA and the stage I/II combiners, against hand-computed values on small tensors."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.checks import ShapeError
from ivf_perception.models import build_model
from ivf_perception.models.base import FusionSegOutput
from ivf_training.losses import gradient_loss, intensity_loss, ohem_cross_entropy
from ivf_training.mafs_losses import (
    MAFS_STAGE2_AUX_KEYS,
    DynamicWeightAverage,
    LossTerms,
    MAFSStage1Loss,
    MAFSStage2Loss,
    alpha_fair,
    balanced_bce_loss,
    binary_target,
    boundary_loss,
    boundary_target,
    dice_loss,
    kd_loss,
    masked_reconstruction_loss,
    masked_reconstruction_terms,
    random_patch_mask,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ce(z: list[float], y: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[y]


# --------------------------------------------------------------------------------------------
# masks


class TestRandomPatchMask:
    @pytest.mark.parametrize("size", [(96, 128), (70, 100)])
    def test_whole_patches_on_the_32_grid(self, size: tuple[int, int]) -> None:
        h, w = size
        g = torch.Generator().manual_seed(0)
        mask = random_patch_mask(16, h, w, 32, (0.2, 0.8), generator=g)
        assert mask.shape == (16, 1, h, w) and mask.dtype == torch.bool
        for y0 in range(0, h, 32):
            for x0 in range(0, w, 32):
                cell = mask[:, 0, y0:y0 + 32, x0:x0 + 32].flatten(1)
                # all or nothing per (possibly border-cut) cell
                assert torch.equal(cell.all(1), cell.any(1))

    def test_patch_ratio_in_range_and_spread(self) -> None:
        g = torch.Generator().manual_seed(1)
        lo, hi = 0.3, 0.6
        mask = random_patch_mask(400, 128, 160, 32, (lo, hi), generator=g)  # 4×5 = 20 cells
        cells = mask[:, 0, ::32, ::32].flatten(1).float()
        ratio = cells.mean(1)
        assert ratio.min() >= lo - 1e-6 and ratio.max() <= hi + 1e-6
        assert abs(ratio.mean().item() - (lo + hi) / 2) < 0.02
        assert ratio.min() <= lo + 0.05 and ratio.max() >= hi - 0.05  # the whole range is used
        # every cell is hidden about equally often: positions are uniform
        per_cell = cells.mean(0)
        assert (per_cell - per_cell.mean()).abs().max() < 0.1

    def test_fixed_ratio_and_reproducible(self) -> None:
        a = random_patch_mask(3, 64, 64, 32, (0.5, 0.5), generator=torch.Generator().manual_seed(2))
        b = random_patch_mask(3, 64, 64, 32, (0.5, 0.5), generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
        assert (a.flatten(1).float().mean(1) == 0.5).all()
        assert random_patch_mask(2, 64, 64, 32, (0.0, 0.0)).sum() == 0
        assert random_patch_mask(2, 64, 64, 32, (1.0, 1.0)).all()

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
            random_patch_mask(1, 32, 32, 32, (0.8, 0.2))
        with pytest.raises(ValueError, match="patch >= 1"):
            random_patch_mask(1, 32, 32, 0)


class TestMaskedReconstruction:
    def _data(self, c: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(3)
        pred = torch.rand(2, c, 64, 64, generator=g)
        target = torch.rand(2, c, 64, 64, generator=g)
        mask = random_patch_mask(2, 64, 64, 32, (0.25, 0.5), generator=g)
        return pred, target, mask

    def test_unmasked_pixels_of_pred_do_not_matter(self) -> None:
        pred, target, mask = self._data()
        base = masked_reconstruction_loss(pred, target, mask)
        changed = torch.where(mask, pred, torch.rand_like(pred) * 10)
        assert torch.allclose(masked_reconstruction_loss(changed, target, mask), base)
        # and pixels inside the mask do
        assert masked_reconstruction_loss(torch.where(mask, pred + 0.3, pred), target, mask) != base

    def test_gradient_only_inside_the_mask(self) -> None:
        pred, target, mask = self._data(c=1)
        pred.requires_grad_(True)
        masked_reconstruction_loss(pred, target, mask).backward()
        assert pred.grad is not None
        assert (pred.grad[~mask] == 0).all()
        assert (pred.grad[mask] != 0).float().mean() > 0.9

    def test_hand_values(self) -> None:
        # constant images: no gradients anywhere, intensity = |difference| on the hidden pixels
        pred = torch.full((1, 1, 4, 4), 0.7)
        target = torch.full((1, 1, 4, 4), 0.2)
        mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
        mask[..., :2, :2] = True
        intensity, gradient = masked_reconstruction_terms(pred, target, mask)
        assert intensity.item() == pytest.approx(0.5)
        # pasted image: 0.7 in the top-left 2×2, 0.2 elsewhere; Sobel (1/8) at the hidden pixels
        pasted = torch.where(mask, pred, target)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        padded = F.pad(pasted, (1, 1, 1, 1), mode="replicate")
        gx = F.conv2d(padded, kx[None, None]).abs()
        gy = F.conv2d(padded, kx.t()[None, None]).abs()
        expected = (gx + gy)[mask].mean()
        assert gradient.item() == pytest.approx(expected.item())
        total = masked_reconstruction_loss(pred, target, mask, alpha_intensity=5, alpha_gradient=5)
        assert total.item() == pytest.approx(5 * 0.5 + 5 * expected.item())

    def test_perfect_and_empty(self) -> None:
        pred, target, mask = self._data()
        assert masked_reconstruction_loss(target.clone(), target, mask).item() == 0
        assert masked_reconstruction_loss(pred, target, torch.zeros_like(mask)).item() == 0

    def test_ratio_independent_scale(self) -> None:
        pred = torch.full((1, 1, 64, 64), 0.5)
        target = torch.zeros(1, 1, 64, 64)
        small = random_patch_mask(1, 64, 64, 32, (0.25, 0.25))
        large = random_patch_mask(1, 64, 64, 32, (0.75, 0.75))
        a = masked_reconstruction_terms(pred, target, small)[0]
        b = masked_reconstruction_terms(pred, target, large)[0]
        assert a.item() == pytest.approx(0.5) and b.item() == pytest.approx(0.5)

    def test_exception(self) -> None:
        pred, target, mask = self._data()
        with pytest.raises(ShapeError, match="mask"):
            masked_reconstruction_loss(pred, target, mask[..., :32])


# --------------------------------------------------------------------------------------------
# targets

_LABELS = torch.tensor([[[1, 1, 2, 2],
                         [1, 1, 2, 2],
                         [1, 1, 255, 2],
                         [0, 0, 0, 0]]])


class TestTargets:
    def test_binary(self) -> None:
        expected = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 255, 1], [0, 0, 0, 0]]])
        assert torch.equal(binary_target(_LABELS), expected)
        assert binary_target(_LABELS).dtype == torch.int64

    def test_boundary_width_1(self) -> None:
        expected = torch.tensor([[[0, 1, 1, 0],
                                  [0, 1, 1, 0],
                                  [1, 1, 255, 1],
                                  [1, 1, 1, 1]]])
        assert torch.equal(boundary_target(_LABELS, 1), expected)

    def test_boundary_matches_definition(self) -> None:
        g = torch.Generator().manual_seed(4)
        labels = torch.randint(0, 3, (2, 9, 11), generator=g)
        labels[torch.rand(labels.shape, generator=g) < 0.15] = 255
        for width in (1, 2):
            out = boundary_target(labels, width)
            for b in range(2):
                for y in range(9):
                    for x in range(11):
                        c = int(labels[b, y, x])
                        if c == 255:
                            assert out[b, y, x] == 255
                            continue
                        win = labels[b, max(0, y - width):y + width + 1, max(0, x - width):x + width + 1]
                        edge = bool(((win != c) & (win != 255)).any())
                        assert int(out[b, y, x]) == int(edge)

    def test_uniform_and_ignore_only(self) -> None:
        assert (boundary_target(torch.full((1, 5, 5), 3), 2) == 0).all()
        assert (boundary_target(torch.full((1, 5, 5), 255), 1) == 255).all()
        with pytest.raises(ValueError, match="width"):
            boundary_target(_LABELS, 0)


# --------------------------------------------------------------------------------------------
# segmentation terms


class TestOHEM:
    # one image, 2 classes, 1×5 pixels; logits (z0, z1) per pixel
    Z = [[2.0, 0.0], [0.0, 3.0], [0.5, 0.0], [0.0, 0.5], [5.0, -5.0]]
    Y = [0, 0, 0, 1, 0]

    def _inputs(self, y: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.tensor(self.Z).t().reshape(1, 2, 1, 5).contiguous()
        return logits, torch.tensor([y or self.Y])[:, None].reshape(1, 1, 5)

    def _losses(self, y: list[int]) -> list[float]:
        return [_ce(z, t) if t != 255 else float("nan") for z, t in zip(self.Z, y)]

    def test_keeps_hard_pixels(self) -> None:
        logits, labels = self._inputs()
        ce = self._losses(self.Y)
        tau = -math.log(0.7)
        hard = [v for v in ce if v > tau]
        assert len(hard) == 3  # pixels 1, 2 and 3 are hard; 0 and 4 are easy
        out = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=2)
        assert out.item() == pytest.approx(sum(hard) / 3)

    def test_min_kept_takes_the_hardest(self) -> None:
        logits, labels = self._inputs()
        ce = sorted(self._losses(self.Y), reverse=True)
        out = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept=4)
        assert out.item() == pytest.approx(sum(ce[:4]) / 4)
        # min_kept above the number of labelled pixels keeps them all
        assert ohem_cross_entropy(logits, labels, min_kept=50).item() == pytest.approx(sum(ce) / 5)

    def test_ignore(self) -> None:
        y = [0, 255, 0, 1, 0]  # the hardest pixel is ignored
        logits, labels = self._inputs(y)
        ce = self._losses(y)
        hard = [v for v in ce if v == v and v > -math.log(0.7)]
        assert ohem_cross_entropy(logits, labels, min_kept=1).item() == pytest.approx(sum(hard) / len(hard))
        assert ohem_cross_entropy(logits, torch.full_like(labels, 255)).item() == 0

    def test_default_min_kept_is_one_sixteenth(self) -> None:
        g = torch.Generator().manual_seed(5)
        logits = torch.randn(1, 3, 8, 8, generator=g) * 4
        labels = logits.argmax(1)  # every pixel correct …
        labels[0, 0, :3] = (labels[0, 0, :3] + 1) % 3  # … but three
        ce = F.cross_entropy(logits, labels, reduction="none").flatten()
        n_hard = int((ce > -math.log(0.7)).sum())
        k = 64 // 16
        expected = ce.topk(k).values.mean() if n_hard < k else ce[ce > -math.log(0.7)].mean()
        assert ohem_cross_entropy(logits, labels).item() == pytest.approx(expected.item())

    def test_gradient_only_to_kept_pixels(self) -> None:
        logits, labels = self._inputs()
        logits.requires_grad_(True)
        ohem_cross_entropy(logits, labels, min_kept=2).backward()
        touched = logits.grad.abs().sum(1)[0, 0] > 0
        assert touched.tolist() == [False, True, True, True, False]

    def test_exception(self) -> None:
        logits, labels = self._inputs()
        with pytest.raises(ValueError, match="probability"):
            ohem_cross_entropy(logits, labels, thresh=0.0)


class TestBinaryAndBoundaryLosses:
    X = [0.0, 2.0, -1.0, 5.0]
    T = [1, 0, 0, 255]

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.X).view(1, 1, 2, 2), torch.tensor(self.T).view(1, 2, 2)

    def test_balanced_bce_hand(self) -> None:
        logits, target = self._inputs()
        pos = _softplus(-0.0)
        neg = (_softplus(2.0) + _softplus(-1.0)) / 2
        assert balanced_bce_loss(logits, target).item() == pytest.approx((pos + neg) / 2)

    def test_balanced_bce_one_class_and_empty(self) -> None:
        logits, _ = self._inputs()
        only_neg = torch.tensor([0, 0, 0, 255]).view(1, 2, 2)
        assert balanced_bce_loss(logits, only_neg).item() == pytest.approx(
            (_softplus(0.0) + _softplus(2.0) + _softplus(-1.0)) / 3)
        assert balanced_bce_loss(logits, torch.full((1, 2, 2), 255)).item() == 0

    def test_rare_positives_weigh_half(self) -> None:
        # 1 positive among 100 pixels: predicting background everywhere is not cheap
        target = torch.zeros(1, 10, 10, dtype=torch.long)
        target[0, 0, 0] = 1
        logits = torch.full((1, 1, 10, 10), -6.0)
        assert balanced_bce_loss(logits, target).item() == pytest.approx((_softplus(6.0) + _softplus(-6.0)) / 2)

    def test_dice_hand(self) -> None:
        logits, target = self._inputs()
        p = [1 / (1 + math.exp(-v)) for v in self.X[:3]]  # the ignored pixel is left out
        g = [1.0, 0.0, 0.0]
        inter = sum(a * b for a, b in zip(p, g))
        den = sum(a * a for a in p) + sum(b * b for b in g)
        expected = 1 - (2 * inter + 1) / (den + 1)
        assert dice_loss(logits, target).item() == pytest.approx(expected)
        assert boundary_loss(logits, target).item() == pytest.approx(
            expected + balanced_bce_loss(logits, target).item())

    def test_gradcheck(self) -> None:
        logits = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        target = torch.randint(0, 2, (2, 3, 3))
        target[0, 0, 0] = 255
        assert torch.autograd.gradcheck(lambda x: boundary_loss(x, target), (logits,))


class TestKD:
    def test_hand_value(self) -> None:
        student = torch.zeros(1, 2, 1, 1)
        teacher = torch.tensor([4.0, 0.0]).view(1, 2, 1, 1)
        pt = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([4, 0] / 4)
        kl = sum(p * math.log(p / 0.5) for p in pt)
        assert kd_loss(student, teacher, temperature=4.0).item() == pytest.approx(16 * kl)

    def test_zero_when_equal(self) -> None:
        z = torch.randn(2, 5, 6, 7)
        assert kd_loss(z, z.clone()).item() == 0

    def test_ignore_pixels(self) -> None:
        student = torch.zeros(1, 2, 1, 2)
        teacher = torch.tensor([[4.0, -9.0], [0.0, 9.0]]).view(1, 2, 1, 2)
        labels = torch.tensor([[[0, 255]]])
        only_first = kd_loss(student[..., :1], teacher[..., :1], 4.0)
        assert kd_loss(student, teacher, 4.0, labels).item() == pytest.approx(only_first.item())
        assert kd_loss(student, teacher, 4.0).item() != pytest.approx(only_first.item())

    def test_teacher_resized_and_detached(self) -> None:
        student = torch.randn(1, 3, 8, 8, requires_grad=True)
        teacher = torch.randn(1, 3, 4, 4, requires_grad=True)
        kd_loss(student, teacher).backward()
        assert student.grad is not None and student.grad.abs().sum() > 0
        assert teacher.grad is None

    def test_gradcheck(self) -> None:
        s = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        t = torch.randn(1, 3, 2, 2, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 4.0), (s,))

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match="teacher"):
            kd_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))


# --------------------------------------------------------------------------------------------
# weighting


class TestAlphaFair:
    @pytest.mark.parametrize("alpha,expected", [(0.8, 2**0.2 / 0.2), (1.0, math.log(2)), (0.0, 2.0), (2.0, -0.5)])
    def test_hand_values(self, alpha: float, expected: float) -> None:
        assert alpha_fair(torch.tensor(2.0), alpha).item() == pytest.approx(expected)

    def test_gradient_is_loss_to_minus_alpha(self) -> None:
        x = torch.tensor([0.5, 2.0, 7.0], requires_grad=True)
        alpha_fair(x, 0.8).sum().backward()
        assert torch.allclose(x.grad, x.detach() ** -0.8)

    def test_zero_loss_is_finite(self) -> None:
        x = torch.tensor(0.0, requires_grad=True)
        y = alpha_fair(x, 0.8)
        y.backward()
        assert torch.isfinite(y) and torch.isfinite(x.grad)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="alpha >= 0"):
            alpha_fair(torch.tensor(1.0), -0.5)


class TestDWA:
    def test_equal_weights_for_the_first_two_periods(self) -> None:
        dwa = DynamicWeightAverage(2, temperature=500)
        assert torch.equal(dwa.weights(), torch.ones(2))
        dwa.observe(torch.tensor([1.0, 2.0]))
        dwa.end_period()
        assert torch.equal(dwa.weights(), torch.ones(2))

    @pytest.mark.parametrize("temperature", [500.0, 1.0])
    def test_hand_values(self, temperature: float) -> None:
        dwa = DynamicWeightAverage(2, temperature=temperature)
        for losses in ([1.0, 2.0], [3.0, 4.0]):  # period t−2 is the mean of two steps: (2, 3)
            dwa.observe(torch.tensor(losses))
        dwa.end_period()
        dwa.observe(torch.tensor([1.0, 3.0]))  # period t−1
        dwa.end_period()
        r = [1.0 / 2.0, 3.0 / 3.0]
        e = [math.exp(v / temperature) for v in r]
        expected = [2 * v / sum(e) for v in e]
        assert dwa.weights().tolist() == pytest.approx(expected, rel=1e-6)
        assert dwa.weights().sum().item() == pytest.approx(2.0)
        # the slower task (ratio 1) gets the larger weight
        assert dwa.weights()[1] > dwa.weights()[0]

    def test_keeps_only_two_periods(self) -> None:
        dwa = DynamicWeightAverage(2, temperature=1.0)
        for losses in ([100.0, 1.0], [2.0, 2.0], [1.0, 4.0]):
            dwa.observe(torch.tensor(losses))
            dwa.end_period()
        e = [math.exp(0.5), math.exp(2.0)]
        assert dwa.weights().tolist() == pytest.approx([2 * v / sum(e) for v in e], rel=1e-6)

    def test_empty_period_and_state_dict(self) -> None:
        dwa = DynamicWeightAverage(3, temperature=2.0)
        assert dwa.end_period() is False
        for losses in ([1.0, 2.0, 3.0], [0.5, 2.0, 6.0]):
            dwa.observe(torch.tensor(losses))
            dwa.end_period()
        restored = DynamicWeightAverage(3, temperature=2.0)
        restored.load_state_dict(dwa.state_dict())
        assert torch.equal(restored.weights(), dwa.weights())
        assert not torch.equal(dwa.weights(), torch.ones(3))

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match="losses"):
            DynamicWeightAverage(2).observe(torch.ones(3))
        with pytest.raises(ValueError, match="temperature"):
            DynamicWeightAverage(2, temperature=0)


# --------------------------------------------------------------------------------------------
# combiners

B, K, H, W = 2, 4, 16, 16


def _stage2_inputs(seed: int = 6, *, aux: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(B, 3, H, W, generator=g)
    thermal = torch.rand(B, 1, H, W, generator=g)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    labels[:, :2] = 255
    fused = torch.rand(B, 3, H, W, generator=g).requires_grad_(True)
    logits = torch.randn(B, K, H, W, generator=g).requires_grad_(True)
    extras = {}
    if aux:
        extras = {
            "binary_logits": torch.randn(B, 1, H // 2, W // 2, generator=g).requires_grad_(True),
            "boundary_logits": torch.randn(B, 1, H, W, generator=g).requires_grad_(True),
            "aux_logits": [torch.randn(B, K, H // 4, W // 4, generator=g).requires_grad_(True),
                           torch.randn(B, K, H // 2, W // 2, generator=g).requires_grad_(True)],
        }
    teacher = torch.randn(B, K, H // 2, W // 2, generator=g).requires_grad_(True)
    return {"output": FusionSegOutput(fused=fused, logits=logits, aux=extras), "rgb": rgb,
            "thermal": thermal, "labels": labels, "teacher": teacher}


class TestStage2:
    def test_total_is_dwa_weighted_alpha_fair_tasks(self) -> None:
        d = _stage2_inputs()
        loss = MAFSStage2Loss(fusion_intensity=5.0, fusion_gradient=8.0, gradient_form="magnitude")  # ours
        terms = loss(d["output"], d["rgb"], d["thermal"], d["labels"], d["teacher"])
        out = d["output"]
        assert set(out.aux) == set(MAFS_STAGE2_AUX_KEYS)
        assert isinstance(terms, LossTerms) and terms.absent == {}
        y_f = (0.299 * out.fused[:, :1] + 0.587 * out.fused[:, 1:2] + 0.114 * out.fused[:, 2:])
        y_vi = (0.299 * d["rgb"][:, :1] + 0.587 * d["rgb"][:, 1:2] + 0.114 * d["rgb"][:, 2:])
        fusion = 5 * intensity_loss(y_f, y_vi, d["thermal"]) + 8 * gradient_loss(y_f, y_vi, d["thermal"])
        labels = d["labels"]
        up = lambda x: F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)  # noqa: E731
        aux = sum(ohem_cross_entropy(up(a), labels) for a in out.aux["aux_logits"]) / 2
        seg = (ohem_cross_entropy(out.logits, labels) + 0.4 * aux
               + balanced_bce_loss(up(out.aux["binary_logits"]), binary_target(labels))
               + boundary_loss(out.aux["boundary_logits"], boundary_target(labels, 1))
               + kd_loss(out.logits, d["teacher"], 4.0, labels))
        assert terms["fusion"].item() == pytest.approx(fusion.item(), rel=1e-5)
        assert terms["segmentation"].item() == pytest.approx(seg.item(), rel=1e-5)
        expected = 5 * fusion**0.2 + 5 * seg**0.2  # DWA weights are 1 at the start
        assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert terms["dwa_fusion"].item() == 1 and terms["dwa_segmentation"].item() == 1

    def test_gradients_reach_every_prediction_but_not_the_teacher(self) -> None:
        d = _stage2_inputs()
        terms = MAFSStage2Loss()(d["output"], d["rgb"], d["thermal"], d["labels"], d["teacher"])
        terms["total"].backward()
        out = d["output"]
        for name, t in [("fused", out.fused), ("logits", out.logits), ("binary", out.aux["binary_logits"]),
                        ("boundary", out.aux["boundary_logits"]), ("aux0", out.aux["aux_logits"][0]),
                        ("aux1", out.aux["aux_logits"][1])]:
            assert t.grad is not None and t.grad.abs().sum() > 0, name
        assert d["teacher"].grad is None

    def test_absent_terms_are_reported(self, caplog: pytest.LogCaptureFixture) -> None:
        d = _stage2_inputs(aux=False)
        loss = MAFSStage2Loss()
        with caplog.at_level(logging.INFO, logger="ivf_training.mafs_losses"):
            terms = loss(d["output"], d["rgb"], d["thermal"], d["labels"])
        assert set(terms.absent) == {"seg_aux", "seg_binary", "seg_boundary", "seg_kd"}
        assert "binary_logits" in terms.absent["seg_binary"] and "teacher" in terms.absent["seg_kd"]
        assert not set(terms.absent) & set(terms)
        assert terms["segmentation"].item() == pytest.approx(terms["seg_ohem"].item())
        assert "seg_binary" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ivf_training.mafs_losses"):
            loss(d["output"], d["rgb"], d["thermal"], d["labels"])
        assert caplog.text == ""  # reported once

    def test_no_labels_no_teacher_is_fusion_only(self) -> None:
        d = _stage2_inputs()
        loss = MAFSStage2Loss(dwa_temperature=1.0)
        for _ in range(3):
            terms = loss(d["output"], d["rgb"], d["thermal"])
        assert "segmentation" in terms.absent and "segmentation" not in terms
        assert terms["total"].item() == pytest.approx(alpha_fair(terms["fusion"]).item())
        assert int(loss.dwa.periods) == 0  # nothing recorded without both tasks

    def test_kd_without_labels(self) -> None:
        d = _stage2_inputs()
        terms = MAFSStage2Loss()(d["output"], d["rgb"], d["thermal"], None, d["teacher"])
        assert set(terms.absent) == {"seg_ohem", "seg_aux", "seg_binary", "seg_boundary"}
        assert terms["segmentation"].item() == pytest.approx(
            kd_loss(d["output"].logits, d["teacher"], 4.0).item())

    def test_dwa_steps_and_eval_mode(self) -> None:
        d = _stage2_inputs()
        loss = MAFSStage2Loss(dwa_temperature=1.0)
        seen = []
        for _ in range(3):
            terms = loss(d["output"], d["rgb"], d["thermal"], d["labels"], d["teacher"])
            seen.append((terms["dwa_fusion"].item(), terms["fusion"].item(), terms["segmentation"].item()))
        assert seen[0][0] == 1 and seen[1][0] == 1
        # same inputs every step: both rates are 1, so the weights stay equal at step 3
        assert seen[2][0] == pytest.approx(1.0)
        assert int(loss.dwa.periods) == 3
        loss.eval()
        loss(d["output"], d["rgb"], d["thermal"], d["labels"], d["teacher"])
        assert int(loss.dwa.periods) == 3

    def test_dwa_epoch_period(self) -> None:
        d = _stage2_inputs()
        loss = MAFSStage2Loss(dwa_period="epoch")
        for _ in range(2):
            loss(d["output"], d["rgb"], d["thermal"], d["labels"])
        assert int(loss.dwa.periods) == 0
        loss.end_epoch()
        assert int(loss.dwa.periods) == 1

    def test_exception(self) -> None:
        d = _stage2_inputs()
        d["output"].aux["binary_logits"] = torch.zeros(B, 2, H, W)
        with pytest.raises(ShapeError, match="two-class head"):
            MAFSStage2Loss()(d["output"], d["rgb"], d["thermal"], d["labels"])
        with pytest.raises(ValueError, match="dwa_period"):
            MAFSStage2Loss(dwa_period="batch")  # type: ignore[arg-type]


class TestStage1:
    def _data(self) -> tuple[FusionSegOutput, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        rgb, thermal = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
        aux = {"recon_rgb": torch.rand(2, 3, 64, 64, generator=g).requires_grad_(True),
               "recon_thermal": torch.rand(2, 1, 64, 64, generator=g).requires_grad_(True)}
        m_rgb = random_patch_mask(2, 64, 64, generator=g)
        m_th = random_patch_mask(2, 64, 64, generator=g)
        return FusionSegOutput(fused=rgb, logits=None, aux=aux), rgb, thermal, m_rgb, m_th

    def test_total_and_gradients(self) -> None:
        out, rgb, thermal, m_rgb, m_th = self._data()
        terms = MAFSStage1Loss()(out, rgb, thermal, m_rgb, m_th)
        expected = (masked_reconstruction_loss(out.aux["recon_rgb"], rgb, m_rgb)
                    + masked_reconstruction_loss(out.aux["recon_thermal"], thermal, m_th))
        assert terms["total"].item() == pytest.approx(expected.item())
        assert terms.absent == {}
        terms["total"].backward()
        for key, mask in (("recon_rgb", m_rgb), ("recon_thermal", m_th)):
            grad = out.aux[key].grad
            assert grad is not None and grad.abs().sum() > 0
            assert (grad * ~mask == 0).all()

    def test_masks_from_aux_and_absent_modality(self) -> None:
        out, rgb, thermal, m_rgb, _ = self._data()
        del out.aux["recon_thermal"]
        out.aux["mask_rgb"] = m_rgb
        terms = MAFSStage1Loss()(out, rgb, thermal)
        assert "rec_thermal" in terms.absent and "rec_thermal" not in terms
        assert terms["total"].item() == pytest.approx(terms["rec_rgb"].item())

    def test_exception(self) -> None:
        out, rgb, thermal, m_rgb, _ = self._data()
        with pytest.raises(KeyError, match="mask_thermal"):
            MAFSStage1Loss()(out, rgb, thermal, m_rgb)
        with pytest.raises(KeyError, match="recon_rgb"):
            MAFSStage1Loss()(FusionSegOutput(fused=rgb, logits=None), rgb, thermal, m_rgb)


def test_aux_keys_are_those_the_stage_two_loss_reads() -> None:
    """The MAFS model's training outputs carry every ``aux`` key the stage II loss reads (moved here
    from test/models: the robot package's tests never import the training package)."""
    out = build_model("test_mafs", num_classes=3).train()(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    assert set(MAFS_STAGE2_AUX_KEYS) <= set(out.aux)
