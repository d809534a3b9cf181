"""The common end of a fusion-segmentation loss: weighted sum, optional segmentation CE, logged terms.

Why one helper: every loss kind returns ``(total, terms)`` with the same contract (the trainer
back-propagates ``total`` and logs ``terms``: unweighted, detached, with ``seg_ce`` only when
the model has a segmentation head and the batch has labels, and the weighted ``total``), so the
contract is written once. A kind whose total is not a plain weighted sum of its terms (S4Fusion's
fusion and perception groups, CMFS's MoE balance) keeps its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ivf_perception.models.base import FusionSegOutput
from ivf_training.losses import segmentation_loss

__all__ = ["weighted_total"]


def weighted_total(terms: dict[str, torch.Tensor], weights: Mapping[str, float], output: FusionSegOutput,
                   labels: torch.Tensor | None, seg_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Σ weights[k]·terms[k]`` over ``terms`` (+ ``seg_weight·CE(logits, labels)``) and the terms to log.

    Args:
        terms: the unweighted scalar terms computed (each must have a weight); ``seg_ce`` and
            ``total`` are added to it.
        weights: the weight of every term name.
        output: the model's output (its ``logits`` feed the segmentation term).
        labels: (B, H, W) class ids, or None (no segmentation term).
        seg_weight: weight of the cross-entropy; 0 leaves it out.

    Returns:
        ``(total, detached)``: the scalar to back-propagate and a detached copy of ``terms``.
    """
    total = sum(weights[k] * v for k, v in terms.items())
    if output.logits is not None and labels is not None and seg_weight:
        terms["seg_ce"] = segmentation_loss(output.logits.float(), labels)
        total = total + seg_weight * terms["seg_ce"]
    assert isinstance(total, torch.Tensor)
    terms["total"] = total
    return total, {k: v.detach() for k, v in terms.items()}
