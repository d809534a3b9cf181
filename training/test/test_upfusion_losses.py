"""UP-Fusion's loss (spec §1.6) on small hand-computed images, its config kind and objective."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models import build_model
from ivf_perception.models.base import FusionSegOutput
from ivf_training.config import ConfigError, UPFusionLossConfig, load_config
from ivf_training.objectives import UPFusionObjective, build_objective
from ivf_training.upfusion_losses import UPFusionLoss, gradient_weighted_ssim, sobel_l1, ssim_same

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_sobel_is_unnormalised_with_zero_padding() -> None:
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    expected = torch.tensor([[2.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 2.0]])
    torch.testing.assert_close(sobel_l1(x)[0, 0], expected)
    flat = torch.ones(1, 1, 4, 4)  # zero padding: a constant image has border gradients
    assert sobel_l1(flat)[0, 0, 1:3, 1:3].abs().max() == 0 and sobel_l1(flat)[0, 0, 0, 0] == 6.0  # (2+1) + |-2-1|


def _ssim_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pytorch-ssim as released: one 2-D 11×11 Gaussian window, zero padding 5, mean of the map."""
    coords = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-coords**2 / (2 * 1.5**2))
    g = g / g.sum()
    w = (g[:, None] @ g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean()


def test_ssim_is_the_zero_padded_same_window_of_the_release() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 13, 17, generator=g), torch.rand(2, 1, 13, 17, generator=g)
    torch.testing.assert_close(ssim_same(x, y), _ssim_reference(x, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssim_same(x, x), torch.tensor(1.0))


def test_ssim_weights_follow_the_mean_gradients_of_the_batch() -> None:
    g = torch.Generator().manual_seed(1)
    a, f = torch.rand(1, 1, 12, 12, generator=g), torch.rand(1, 1, 12, 12, generator=g)
    zero = torch.zeros_like(a)  # no gradient anywhere: all the weight goes to A
    torch.testing.assert_close(gradient_weighted_ssim(a, zero, f), ssim_same(a, f))
    b = 2 * a  # twice the gradients: weights 1/3 and 2/3
    expected = ssim_same(a, f) / 3 + 2 * ssim_same(b, f) / 3
    torch.testing.assert_close(gradient_weighted_ssim(a, b, f), expected)


def _out(y: torch.Tensor, logits: torch.Tensor | None = None) -> FusionSegOutput:
    return FusionSegOutput(fused=y.expand(-1, 3, -1, -1), logits=logits, aux={"fused_y": y})


def test_paper_variant_terms_and_weights() -> None:
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[:, 1] = 0.5  # green: Y = 0.2935, channel mean = 1/6
    ir = torch.full((1, 1, 4, 4), 0.2)
    y = torch.full((1, 1, 4, 4), 0.4)
    total, terms = UPFusionLoss("paper")(_out(y), rgb, ir)
    torch.testing.assert_close(terms["fus_intensity"], torch.tensor(0.4 - 0.2935))
    assert "fus_ssim" not in terms
    torch.testing.assert_close(total, 10 * terms["fus_intensity"] + 10 * terms["fus_gradient"])


def test_code_variant_uses_the_channel_mean_and_adds_ssim() -> None:
    rgb = torch.zeros(1, 3, 12, 12)
    rgb[:, 1] = 0.9
    ir = torch.full((1, 1, 12, 12), 0.1)
    loss = UPFusionLoss("code")
    torch.testing.assert_close(loss.visible_target(rgb), torch.full((1, 1, 12, 12), 0.3))
    total, terms = loss(_out(loss.visible_target(rgb)), rgb, ir)
    assert terms["fus_intensity"] == 0 and terms["fus_gradient"] == 0
    torch.testing.assert_close(total, 10 * terms["fus_ssim"])
    assert 0 < terms["fus_ssim"] < 1


def test_perfect_fusion_of_an_image_with_a_black_partner_has_zero_loss() -> None:
    a = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    rgb = a.expand(-1, 3, -1, -1)
    _, terms = UPFusionLoss("code")(_out(a), rgb, torch.zeros_like(a))
    for name in ("fus_intensity", "fus_gradient", "fus_ssim"):
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-6), name


def test_segmentation_term_only_with_logits_and_labels() -> None:
    y = torch.full((1, 1, 4, 4), 0.5)
    logits = torch.zeros(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    total, terms = UPFusionLoss("paper", seg=2.0)(_out(y, logits), torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4),
                                                   labels)
    torch.testing.assert_close(terms["seg_ce"], torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(total, 10 * terms["fus_intensity"] + 10 * terms["fus_gradient"] + 2 * terms["seg_ce"])


def test_config_kind_and_bad_values() -> None:
    cfg = load_config(RECIPES / "upfusion_generated.yaml")
    assert cfg.model.variant == "upfusion"
    assert isinstance(cfg.loss, UPFusionLossConfig) and cfg.loss.variant == "paper"
    with pytest.raises(ConfigError):
        UPFusionLossConfig(variant="eq5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        UPFusionLossConfig(gradient=-1.0)


def test_objective_trains_the_model_and_leaves_the_scorers_untouched() -> None:
    objective, loss_fn = build_objective(UPFusionLossConfig(variant="code"), 9)
    assert isinstance(objective, UPFusionObjective)
    torch.manual_seed(0)
    model = build_model("test_upfusion", num_classes=9).train()
    model.set_text_embedding(torch.randn(512))
    g = torch.Generator().manual_seed(3)
    rgb, ir = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    labels = torch.randint(0, 9, (2, 16, 16), generator=g)
    total, terms = objective.train_step(model, loss_fn, rgb, ir, labels, nullcontext)
    total.backward()
    assert torch.isfinite(total) and {"fus_intensity", "fus_gradient", "fus_ssim", "seg_ce", "total"} <= set(terms)
    assert model.output.weight.grad is not None and model.tcpm[0].se_fc[0].weight.grad is None
