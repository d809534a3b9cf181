"""CMFS's training objective: cross-entropy + 0.1 · L_fusion (+ the MoE load-balancing term).

Paper (DESIGN §5)::

    L        = L_CE + 0.1 · L_fusion
    L_fusion = 0.5 · L1(F, max(I_vi^γ, β(I_t)))                       intensity
             + 1.0 · L1(CbCr(F), CbCr(I_vi^γ))                         colour
             + 0.2 · L1(|∇F|, max(|∇I_vi^γ|, |∇β(I_t)|))               gradient

``F`` is the fused RGB, ``I_vi^γ`` the visible image gamma-corrected (brightens dark scenes for
γ < 1), ``β(I_t)`` the thermal image with its contrast scaled by β around its mean (torchvision's
``adjust_contrast``, as the public code does), repeated to three channels. γ/β per dataset:
0.5/1.7 MFNet, 0.8/1.0 FMB, 0.5/1.8 PST900 (:data:`DATASET_GAMMA_BETA`).

Our reading where the public code differs from the paper's notation: the gradient term compares
Sobel magnitudes (``|Gx| + |Gy|``, the same operator as the other losses); the public code takes
the maximum of the *signed* x and y derivatives, which prefers rising over falling edges.

The MoE load-balancing term (``aux["moe_balance_loss"]``, averaged over the stages) keeps the
low-rank experts in use; the paper does not give its weight, 0.01 is the usual Switch/GShard
choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray, rgb_to_ycbcr
from ivf_training.losses import segmentation_loss, sobel_magnitude

__all__ = ["DATASET_GAMMA_BETA", "CMFSLoss", "adjust_contrast", "cmfs_fusion_terms", "gamma_correct"]

DATASET_GAMMA_BETA: dict[str, tuple[float, float]] = {
    "mfnet": (0.5, 1.7),
    "fmb": (0.8, 1.0),
    "pst900": (0.5, 1.8),
}
"""The paper's (γ, β) per dataset."""


def gamma_correct(img: torch.Tensor, gamma: float) -> torch.Tensor:
    """``img ** gamma`` on [0, 1] (torchvision's ``adjust_gamma`` with gain 1).

    Shape:
        img: (B, C, H, W) -> (B, C, H, W)
    """
    return img.clamp(0.0, 1.0).pow(gamma)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale contrast around each image's mean gray level and clip to [0, 1] (torchvision's rule).

    Shape:
        img: (B, C, H, W) with C in {1, 3} -> (B, C, H, W)
    """
    gray = img if img.shape[1] == 1 else rgb_to_gray(img)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    return (factor * img + (1.0 - factor) * mean).clamp(0.0, 1.0)


def cmfs_fusion_terms(fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor, gamma: float,
                      beta: float) -> dict[str, torch.Tensor]:
    """The three unweighted fusion terms of L_fusion.

    Shape:
        fused, rgb: (B, 3, H, W); thermal: (B, 1, H, W)  ->  scalars
    """
    check_shape(fused, "B 3 H W", name="fused", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
    vis = gamma_correct(rgb, gamma)
    ir = adjust_contrast(thermal, beta).expand_as(vis)
    return {
        "fus_intensity": F.l1_loss(fused, torch.maximum(vis, ir)),
        "fus_color": F.l1_loss(rgb_to_ycbcr(fused)[:, 1:], rgb_to_ycbcr(vis)[:, 1:]),
        "fus_gradient": F.l1_loss(sobel_magnitude(fused), torch.maximum(sobel_magnitude(vis), sobel_magnitude(ir))),
    }


class CMFSLoss(nn.Module):
    """``seg·CE + fusion·(intensity·L_int + color·L_color + gradient·L_grad) + moe_balance·L_bal``.

    Args:
        seg: cross-entropy weight (ignore index 255).
        fusion: weight of L_fusion (0.1 in the paper).
        intensity, color, gradient: weights inside L_fusion (0.5, 1.0, 0.2).
        gamma: γ of the visible gamma correction.
        beta: β of the thermal contrast adjustment.
        moe_balance: weight of the MoE load-balancing term.

    Returns (forward):
        ``(total, terms)`` as :class:`ivf_training.losses.FusionSegLoss` does; terms are detached
        and unweighted (``seg_ce``, ``fus_intensity``, ``fus_color``, ``fus_gradient``,
        ``moe_balance``, ``total``).
    """

    def __init__(self, *, seg: float = 1.0, fusion: float = 0.1, intensity: float = 0.5, color: float = 1.0,
                 gradient: float = 0.2, gamma: float = 0.5, beta: float = 1.7, moe_balance: float = 0.01) -> None:
        super().__init__()
        if gamma <= 0 or beta < 0:
            raise ValueError(f"CMFS loss needs gamma > 0 and beta >= 0, got gamma={gamma}, beta={beta}")
        self.seg_weight = seg
        self.fusion_weight = fusion
        self.weights = {"fus_intensity": intensity, "fus_color": color, "fus_gradient": gradient}
        self.gamma = gamma
        self.beta = beta
        self.moe_weight = moe_balance

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = cmfs_fusion_terms(output.fused.float(), rgb, thermal, self.gamma, self.beta)
        total = self.fusion_weight * sum(self.weights[k] * terms[k] for k in self.weights)
        balance = output.aux.get("moe_balance_loss")
        if balance is not None and self.moe_weight:
            terms["moe_balance"] = balance.float()
            total = total + self.moe_weight * terms["moe_balance"]
        if output.logits is not None and labels is not None and self.seg_weight:
            terms["seg_ce"] = segmentation_loss(output.logits.float(), labels)
            total = total + self.seg_weight * terms["seg_ce"]
        terms["total"] = total
        return total, {k: v.detach() for k, v in terms.items()}
