"""The distillation teacher of MAFS stage II: how it is fed, and the loss it is trained with.

MAFS distils its segmentation from a teacher that segments *fused* images (the paper: a
SegNeXt-L trained on fused images, applied to the fused image alone). Ours is any registry
segmentation model trained with ``loss.kind: fused_seg_teacher``
(:class:`~ivf_training.objectives.FusedInputSegObjective`): a frozen fusion model fuses every
training pair, and the network learns to segment the fused image. The paper recipes
(``training/recipes/teacher_<dataset>.yaml``) train our strongest registry model, CMFS at its
paper size, with ablation V (no fusion head: a segmentation network) on the fused images of
the dataset's S4Fusion run.

Every registry model takes a visible/thermal pair; :func:`teacher_inputs` decides what the
second input is (``thermal_input``): the fused image's luminance (``"fused"``, the teacher sees
the fused image only, as in the paper) or the thermal image (``"thermal"``, a teacher that also
reads the raw thermal image). Training and distillation must agree, so stage II reads the
setting from the exported teacher's sidecar (:func:`teacher_input_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ivf_perception.engine.weights import WeightsInfo
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_training.losses import segmentation_loss

__all__ = ["TEACHER_INPUTS", "SegmentationOnlyLoss", "teacher_input_of", "teacher_inputs"]

TEACHER_INPUTS = ("fused", "thermal")
"""Accepted ``thermal_input`` values (module docstring)."""


def teacher_inputs(fused: torch.Tensor, thermal: torch.Tensor, thermal_input: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (visible, thermal) pair a teacher receives for a fused image.

    Raises:
        ValueError: an unknown ``thermal_input``.

    Shape:
        fused (B, 3, H, W), thermal (B, 1, H, W) → (B, 3, H, W), (B, 1, H, W)
    """
    if thermal_input == "fused":
        return fused, rgb_to_gray(fused)
    if thermal_input == "thermal":
        return fused, thermal
    raise ValueError(f"Unknown teacher thermal_input {thermal_input!r}; expected one of {list(TEACHER_INPUTS)}")


def teacher_input_of(info: WeightsInfo) -> str:
    """How the teacher in ``info`` was fed: its training recipe's ``loss.thermal_input`` when it
    was trained on fused images, else ``"thermal"`` (a model trained on visible/thermal pairs,
    which keeps receiving the thermal image)."""
    loss: Mapping[str, Any] = (info.recipe or {}).get("loss") or {}
    if loss.get("kind") == "fused_seg_teacher":
        return str(loss.get("thermal_input", "fused"))
    return "thermal"


class SegmentationOnlyLoss(nn.Module):
    """``seg · CE`` of the output's logits (ignore 255): the teacher's objective.

    Returns (forward):
        ``(total, terms)`` with detached ``seg_ce`` and ``total``, as the other losses do.
    """

    def __init__(self, seg: float = 1.0) -> None:
        super().__init__()
        self.seg_weight = seg

    def forward(self, output: FusionSegOutput,
                labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if output.logits is None:
            raise ValueError("the teacher objective needs a segmenting model (logits is None); set model.num_classes")
        if labels is None:
            total = output.logits.sum() * 0.0
            return total, {"total": total.detach()}
        ce = segmentation_loss(output.logits.float(), labels)
        total = self.seg_weight * ce
        return total, {"seg_ce": ce.detach(), "total": total.detach()}
