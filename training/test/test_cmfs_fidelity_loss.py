"""CMFS loss as the public code computes it (issue 15): gradient term, padding mask, balance switch.

Values are checked against hand computations and against a literal re-statement of the public
operators (``F.conv2d`` with its two Sobel kernels and zero padding), so a later change of the
shared Sobel op or of the mask handling cannot drift the paper recipes' objective silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.models.base import FusionSegOutput
from ivf_training.augment import JointAugment, pad_to
from ivf_training.cmfs_losses import CMFSLoss, cmfs_fusion_terms, gradient_term
from ivf_training.config import load_config

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
PAPER_RECIPES = ("cmfs_fmb.yaml", "cmfs_mfnet.yaml", "cmfs_msrs.yaml", "cmfs_pst900.yaml")

_KX = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_KY = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _public_sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The public ``Sobelxy`` per channel: conv2d with the raw kernels, zero padding 1."""
    c = x.shape[1]
    gx = F.conv2d(x, _KX.expand(c, 1, 3, 3), padding=1, groups=c)
    gy = F.conv2d(x, _KY.expand(c, 1, 3, 3), padding=1, groups=c)
    return gx, gy


def test_public_gradient_term_by_hand() -> None:
    # visible: a vertical unit step (columns 0 0 1 1), thermal 0, fused 0.
    # Gx(vis) rows 1-2: [0, 4, 4, -4], rows 0 and 3 (zero padding): [0, 3, 3, -3]; max with 0 and
    # mean over 16 px: (2·8 + 2·6) / 16 = 1.75. Gy(vis) (public sign: positive upwards) is
    # -[0, 1, 3, 3] on row 0 and +[0, 1, 3, 3] on row 3: max with 0 gives 7 / 16.
    vis = torch.zeros(1, 3, 4, 4)
    vis[..., 2:] = 1.0
    ir = torch.zeros(1, 3, 4, 4)
    fused = torch.zeros(1, 3, 4, 4)
    assert float(gradient_term(fused, vis, ir, "public")) == pytest.approx(0.5 * (1.75 + 7 / 16), abs=1e-6)
    # the old form on the same images: |∇| normalised by 8 with replicate padding (0.5 per
    # pixel beside a unit step): 8 px of 0.5 / 16 = 0.25, i.e. 4.375x smaller here
    assert float(gradient_term(fused, vis, ir, "magnitude")) == pytest.approx(0.25, abs=1e-6)


def test_public_gradient_term_matches_the_public_operators() -> None:
    g = torch.Generator().manual_seed(3)
    fused, vis, ir = (torch.rand(2, 3, 9, 11, generator=g) for _ in range(3))
    fx, fy = _public_sobel(fused)
    vx, vy = _public_sobel(vis)
    ix, iy = _public_sobel(ir)
    expected = 0.5 * (fx - torch.maximum(vx, ix)).abs().mean() + 0.5 * (fy - torch.maximum(vy, iy)).abs().mean()
    torch.testing.assert_close(gradient_term(fused, vis, ir, "public"), expected)
    with pytest.raises(ValueError, match="gradient_form"):
        gradient_term(fused, vis, ir, "sobel8")


def test_padding_is_masked_out_of_the_fusion_terms() -> None:
    """With β = 1 (no mean-dependent contrast), the terms of a zero-padded crop with its mask
    equal those of the unpadded image, whatever the network paints on the padding (the public
    gradient form pads with zeros, so the mask's zero band is exactly its border)."""
    g = torch.Generator().manual_seed(4)
    rgb, thermal = torch.rand(1, 3, 6, 7, generator=g), torch.rand(1, 1, 6, 7, generator=g)
    fused = torch.rand(1, 3, 6, 7, generator=g)
    sample = pad_to({"rgb": rgb[0], "thermal": thermal[0], "labels": None}, 9, 10)
    valid = sample["valid"][None]
    assert valid.shape == (1, 9, 10) and int(valid.sum()) == 42
    painted = torch.rand(1, 3, 9, 10, generator=g)  # arbitrary values on the padding
    painted[..., :6, :7] = fused
    ref = cmfs_fusion_terms(fused, rgb, thermal, 0.5, 1.0, "public")
    got = cmfs_fusion_terms(painted, sample["rgb"][None], sample["thermal"][None], 0.5, 1.0, "public", valid)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], msg=key)
    unmasked = cmfs_fusion_terms(painted, sample["rgb"][None], sample["thermal"][None], 0.5, 1.0)
    assert float(unmasked["fus_intensity"]) != pytest.approx(float(ref["fus_intensity"]), rel=1e-3)


def test_augment_marks_the_padding() -> None:
    sample = {"rgb": torch.rand(3, 20, 30), "thermal": torch.rand(1, 20, 30), "labels": torch.zeros(20, 30).long()}
    out = JointAugment(crop=32, scale_range=(1.0, 1.0), hflip=False)(sample, torch.Generator().manual_seed(0))
    valid = out["valid"]
    assert valid.dtype == torch.bool and valid.shape == (32, 32)
    assert int(valid.sum()) == 20 * 30
    # the mask and the labels' 255 padding mark the same pixels
    torch.testing.assert_close(valid, out["labels"] != 255)


def test_balance_term_is_a_switch() -> None:
    fused = torch.rand(1, 3, 8, 8)
    out = FusionSegOutput(fused=fused, logits=None, aux={"moe_balance_loss": torch.tensor(1.5)})
    rgb, thermal = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    _, off = CMFSLoss()(out, rgb, thermal)  # default: as the paper, no balance term
    assert "moe_balance" not in off
    total_on, on = CMFSLoss(moe_balance=0.01)(out, rgb, thermal)
    torch.testing.assert_close(total_on - off["total"], torch.tensor(0.015))
    assert float(on["moe_balance"]) == pytest.approx(1.5)


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipes_use_the_public_objective(recipe: str) -> None:
    loss = load_config(RECIPES / recipe).loss
    assert loss.gradient_form == "public" and loss.moe_balance == 0.0  # type: ignore[union-attr]
    assert (loss.fusion, loss.intensity, loss.color, loss.gradient) == (0.1, 0.5, 1.0, 0.2)  # type: ignore[union-attr]
