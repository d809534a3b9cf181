"""MAFS stage II fusion loss as the public code computes it (issue 15): the gradient term by hand
and against the public operators, the paper's 1:1 weights, and older runs keeping their form."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_training.config import config_to_dict, load_config
from ivf_training.mafs_losses import MAFSStage2Loss, axis_gradient_loss
from ivf_training.run_dir import read_run_config

_KX = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
_KY = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])[None, None]


def test_axis_gradient_loss_by_hand() -> None:
    # visible: columns 0 0 1 1; thermal and fused 0. |Gx| rows 1-2: [0, 4, 4, 4], rows 0, 3
    # (zero padding): [0, 3, 3, 3] -> 42 / 16; |Gy| rows 0 and 3: [0, 1, 3, 3] -> 14 / 16.
    vis = torch.zeros(1, 1, 4, 4)
    vis[..., 2:] = 1.0
    zero = torch.zeros(1, 1, 4, 4)
    assert float(axis_gradient_loss(zero, vis, zero)) == pytest.approx(42 / 16 + 14 / 16, abs=1e-6)


def test_axis_gradient_loss_matches_the_public_fusionloss() -> None:
    g = torch.Generator().manual_seed(5)
    fu, vi, ir = (torch.rand(2, 1, 7, 9, generator=g) for _ in range(3))

    def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, _KX, padding=1).abs(), F.conv2d(x, _KY, padding=1).abs()

    (fx, fy), (vx, vy), (ix, iy) = sobel(fu), sobel(vi), sobel(ir)
    expected = F.l1_loss(torch.maximum(vx, ix), fx) + F.l1_loss(torch.maximum(vy, iy), fy)
    torch.testing.assert_close(axis_gradient_loss(fu, vi, ir), expected)


def test_stage2_fusion_task_uses_the_chosen_form() -> None:
    g = torch.Generator().manual_seed(6)
    rgb, fused = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    thermal = torch.rand(1, 1, 8, 8, generator=g)
    out = FusionSegOutput(fused=fused, logits=None, aux={})
    terms = MAFSStage2Loss()(out, rgb, thermal)  # paper defaults: 1:1, public form
    torch.testing.assert_close(terms["fusion"], terms["fus_intensity"] + terms["fus_gradient"])
    torch.testing.assert_close(terms["fus_gradient"], axis_gradient_loss(rgb_to_gray(fused), rgb_to_gray(rgb), thermal))
    ours = MAFSStage2Loss(fusion_intensity=5.0, fusion_gradient=8.0, gradient_form="magnitude")(out, rgb, thermal)
    torch.testing.assert_close(ours["fusion"], 5.0 * ours["fus_intensity"] + 8.0 * ours["fus_gradient"])
    with pytest.raises(ValueError, match="gradient_form"):
        MAFSStage2Loss(gradient_form="sobel")


def test_an_old_stage2_run_keeps_its_gradient_form(tmp_path: Path) -> None:
    data = config_to_dict(load_config(None, ["model.variant=test_mafs", "loss.kind=mafs_stage2", "max_steps=1",
                                           "data.generated.train_count=2", "data.generated.val_count=1"]))
    del data["loss"]["gradient_form"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path).loss.gradient_form == "magnitude"  # type: ignore[union-attr]
