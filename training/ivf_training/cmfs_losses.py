"""CMFS's training objective: cross-entropy + 0.1 · L_fusion (+ the MoE load-balancing term).

Paper (DESIGN §5)::

    L        = L_CE + 0.1 · L_fusion
    L_fusion = 0.5 · L1(F, max(I_vi^γ, β(I_t)))                       intensity
             + 1.0 · L1(CbCr(F), CbCr(I_vi^γ))                         colour
             + 0.2 · L_grad(F, I_vi^γ, β(I_t))                         gradient (two forms, below)

``F`` is the fused RGB, ``I_vi^γ`` the visible image gamma-corrected (brightens dark scenes for
γ < 1), ``β(I_t)`` the thermal image with its contrast scaled by β around its mean (torchvision's
``adjust_contrast``, as the public code does), repeated to three channels. γ/β per dataset:
0.5/1.7 MFNet, 0.8/1.0 FMB, 0.5/1.8 PST900 (:data:`DATASET_GAMMA_BETA`).

Gradient term, two forms (``gradient_form``):

* ``"public"`` (the paper recipes): the public code's term, ``0.5·L1(Gx(F), max(Gx(I_vi^γ), Gx(β(I_t))))
  + 0.5·L1(Gy(F), max(Gy(·), Gy(·)))`` with the *signed*, unnormalised Sobel derivatives
  (``Gx`` by ``[[-1,0,1],[-2,0,2],[-1,0,1]]``, ``Gy`` by ``[[1,2,1],[0,0,0],[-1,-2,-1]]``, both
  cross-correlations) and zero padding, per RGB channel. The paper's
  weight 0.2 was tuned with this scale.
* ``"magnitude"`` (ours before issue 15, kept as a switch): ``L1(|∇F|, max(|∇I_vi^γ|, |∇β(I_t)|))``
  with the 1/8-normalised Sobel magnitude ``|Gx| + |Gy|`` and replicate padding, the operator of
  the other losses. The signed maximum of the public code prefers rising over falling edges; the
  magnitude does not. At the same weight 0.2 this term is about 4× weaker than the public one
  (median 4.06 over 24 RoadScene cases, FIDELITY_AUDIT CMFS row 48), so switching to it changes
  the balance of the objective, not only the form.

Padding mask: a crop larger than the (rescaled) image is padded with zeros (images) and 255
(labels). ``valid`` (B, H, W), True on real pixels, restricts every fusion term to the real
pixels, as the public code's ``F * Mask`` does: the fused image is zeroed on the padding (so
the gradient at the image border sees the same zero edge as the zero-padded inputs) and each
term is the mean over the real pixels. Without it the network is trained to paint the padded
band, where the targets are meaningless.

The MoE load-balancing term (``aux["moe_balance_loss"]``, averaged over the stages) keeps the
low-rank experts in use; neither the paper nor the public code has it, so the paper recipes set
``moe_balance: 0`` (the switch); 0.01 is the usual Switch/GShard weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray, rgb_to_ycbcr
from ivf_perception.models.layers.sobel import sobel_gradients
from ivf_training.losses import segmentation_loss, sobel_magnitude

__all__ = [
    "DATASET_GAMMA_BETA",
    "GRADIENT_FORMS",
    "CMFSLoss",
    "adjust_contrast",
    "cmfs_fusion_terms",
    "gamma_correct",
    "gradient_term",
]

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


GRADIENT_FORMS = ("public", "magnitude")
"""Accepted ``gradient_form`` values (module docstring)."""


def _masked_l1(x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute difference over the real pixels (all pixels when ``valid`` is None).

    Shape:
        x, target: (B, C, H, W); valid: (B, H, W) bool or None  ->  scalar
    """
    diff = (x - target).abs()
    if valid is None:
        return diff.mean()
    weight = valid[:, None].to(diff.dtype)
    return (diff * weight).sum() / (weight.sum() * diff.shape[1]).clamp_min(1.0)


def gradient_term(fused: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, form: str = "public",
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_grad in one of :data:`GRADIENT_FORMS` (module docstring), per channel.

    Shape:
        fused, vis, ir: (B, C, H, W); valid: (B, H, W) bool or None  ->  scalar
    """
    if form == "public":
        # The public kernels: Gx as ours (positive where intensity grows to the right), Gy
        # positive where it grows *upwards* (ours downwards); the sign matters under the max.
        sign = fused.new_tensor([1.0, -1.0])[:, None, None]
        gf, gv, gi = (sobel_gradients(x, normalized=False, border="zeros") * sign for x in (fused, vis, ir))
        target = torch.maximum(gv, gi)  # (B, C, 2, H, W): index 0 is Gx, 1 is Gy
        return 0.5 * (_masked_l1(gf[:, :, 0], target[:, :, 0], valid)
                      + _masked_l1(gf[:, :, 1], target[:, :, 1], valid))
    if form == "magnitude":
        target = torch.maximum(sobel_magnitude(vis), sobel_magnitude(ir))
        return _masked_l1(sobel_magnitude(fused), target, valid)
    raise ValueError(f"Unknown CMFS gradient_form {form!r}; expected one of {list(GRADIENT_FORMS)}")


def cmfs_fusion_terms(fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor, gamma: float,
                      beta: float, gradient_form: str = "public",
                      valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The three unweighted fusion terms of L_fusion, over the real pixels ``valid`` (all when None).

    Shape:
        fused, rgb: (B, 3, H, W); thermal: (B, 1, H, W); valid: (B, H, W) bool or None  ->  scalars
    """
    check_shape(fused, "B 3 H W", name="fused", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
    if valid is not None:
        check_shape(valid, "B H W", name="valid", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        fused = fused * valid[:, None].to(fused.dtype)  # the public code's F * Mask
    vis = gamma_correct(rgb, gamma)
    ir = adjust_contrast(thermal, beta).expand_as(vis)
    return {
        "fus_intensity": _masked_l1(fused, torch.maximum(vis, ir), valid),
        "fus_color": _masked_l1(rgb_to_ycbcr(fused)[:, 1:], rgb_to_ycbcr(vis)[:, 1:], valid),
        "fus_gradient": gradient_term(fused, vis, ir, gradient_form, valid),
    }


class CMFSLoss(nn.Module):
    """``seg·CE + fusion·(intensity·L_int + color·L_color + gradient·L_grad) + moe_balance·L_bal``.

    Args:
        seg: cross-entropy weight (ignore index 255).
        fusion: weight of L_fusion (0.1 in the paper).
        intensity, color, gradient: weights inside L_fusion (0.5, 1.0, 0.2).
        gamma: γ of the visible gamma correction.
        beta: β of the thermal contrast adjustment.
        moe_balance: weight of the MoE load-balancing term (0 in the paper recipes).
        gradient_form: ``"public"`` or ``"magnitude"`` (module docstring).

    Returns (forward):
        ``(total, terms)`` as :class:`ivf_training.losses.FusionSegLoss` does; terms are detached
        and unweighted (``seg_ce``, ``fus_intensity``, ``fus_color``, ``fus_gradient``,
        ``moe_balance``, ``total``). ``forward`` takes the padding mask ``valid`` (B, H, W),
        True on real pixels, or None (no padding).
    """

    def __init__(self, *, seg: float = 1.0, fusion: float = 0.1, intensity: float = 0.5, color: float = 1.0,
                 gradient: float = 0.2, gamma: float = 0.5, beta: float = 1.7, moe_balance: float = 0.0,
                 gradient_form: str = "public") -> None:
        super().__init__()
        if gamma <= 0 or beta < 0:
            raise ValueError(f"CMFS loss needs gamma > 0 and beta >= 0, got gamma={gamma}, beta={beta}")
        if gradient_form not in GRADIENT_FORMS:
            raise ValueError(f"Unknown CMFS gradient_form {gradient_form!r}; expected one of {list(GRADIENT_FORMS)}")
        self.seg_weight = seg
        self.fusion_weight = fusion
        self.weights = {"fus_intensity": intensity, "fus_color": color, "fus_gradient": gradient}
        self.gamma = gamma
        self.beta = beta
        self.moe_weight = moe_balance
        self.gradient_form = gradient_form

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = cmfs_fusion_terms(output.fused.float(), rgb, thermal, self.gamma, self.beta,
                                  self.gradient_form, valid)
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
