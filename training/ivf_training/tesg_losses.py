"""TeSG's fusion loss: structure (SSIM), gradient, intensity and colour terms (spec §2.5).

The paper names the four terms and puts their formulas and weights in a supplementary that is
not available; everything below is **reconstructed** [R] from Text-IF's ``fusion_loss``, the
public text-guided fusion code closest to TeSG (same four terms, RGB output):

* ``L_int = mean|F − (m·I_ir + (1 − m)·I_vis)|`` with ``m = 1[mean_c(I_ir) > mean_c(I_vis)]`` per
  pixel: the brighter source, whole-pixel (the thermal grey replicated over R, G, B);
* ``L_ssim = (1 − SSIM(I_vis, F)) + (1 − SSIM(gray(I_ir), gray(F)))``: a 48×48 Gaussian window
  (σ 1.5) over the valid region, the visible term on RGB (per channel, averaged), the thermal
  term on BT.601 grey; C1 = 0.01², C2 = 0.03²;
* ``L_grad = mean||S_x*F| − max(|S_x*A|, |S_x*B|)| + mean||S_y*F| − max(|S_y*A|, |S_y*B|)|``:
  unnormalised Sobel kernels, replicate padding, on the grey images A = vis, B = ir, F;
* ``L_color = mean|Cb_F − Cb_vis| + mean|Cr_F − Cr_vis|`` (BT.601 YCbCr);
* ``L = 4·L_int + 1·L_ssim + 12·L_color + 10·L_grad`` — Text-IF's defaults, **not TeSG's**
  (unpublished); each a config value (``loss.kind: tesg``).

Our extension: ``seg · CE`` on labelled pixels when the model has a segmentation head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray, rgb_to_ycbcr
from ivf_perception.models.layers.sobel import sobel_gradients
from ivf_training.loss_terms import weighted_total
from ivf_training.losses import ssim

__all__ = ["TeSGLoss", "tesg_intensity", "tesg_ssim", "tesg_gradient", "tesg_color", "TESG_SSIM_WINDOW"]

TESG_SSIM_WINDOW = 48
"""Text-IF's SSIM window side (valid convolution: crops must be at least this large)."""


def tesg_intensity(fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
    """``L_int``: L1 to the brighter source per pixel (channel means compared).

    Shape:
        fused, rgb (B, 3, H, W), thermal (B, 1, H, W) → scalar
    """
    brighter = (thermal > rgb.mean(dim=1, keepdim=True)).to(rgb.dtype)
    target = brighter * thermal.expand_as(rgb) + (1 - brighter) * rgb
    return F.l1_loss(fused, target)


def tesg_ssim(fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor,
              window_size: int = TESG_SSIM_WINDOW) -> torch.Tensor:
    """``L_ssim = (1 − SSIM(rgb, F)) + (1 − SSIM(thermal, gray F))``, batch means.

    Shape:
        fused, rgb (B, 3, H, W), thermal (B, 1, H, W), H, W >= window_size → scalar
    """
    vis = 1 - ssim(rgb, fused, window_size=window_size).mean()
    ir = 1 - ssim(thermal, rgb_to_gray(fused), window_size=window_size).mean()
    return vis + ir


def tesg_gradient(fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
    """``L_grad``: per-direction L1 between ``|S*F|`` and the larger source ``|S*·|`` on grey images.

    Shape:
        fused, rgb (B, 3, H, W), thermal (B, 1, H, W) → scalar
    """
    grads = [sobel_gradients(x, normalized=False, border="replicate").abs()
             for x in (rgb_to_gray(fused), rgb_to_gray(rgb), thermal)]  # each (B, 1, 2, H, W): Gx, Gy
    g_f, g_a, g_b = grads
    target = torch.maximum(g_a, g_b)
    return F.l1_loss(g_f[:, :, 0], target[:, :, 0]) + F.l1_loss(g_f[:, :, 1], target[:, :, 1])


def tesg_color(fused: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """``L_color = mean|Cb_F − Cb_vis| + mean|Cr_F − Cr_vis|``.

    Shape:
        fused, rgb (B, 3, H, W) → scalar
    """
    f, v = rgb_to_ycbcr(fused), rgb_to_ycbcr(rgb)
    return F.l1_loss(f[:, 1], v[:, 1]) + F.l1_loss(f[:, 2], v[:, 2])


class TeSGLoss(nn.Module):
    """``intensity·L_int + ssim·L_ssim + color·L_color + gradient·L_grad + seg·CE``.

    Args:
        intensity, ssim, color, gradient: term weights (Text-IF: 4, 1, 12, 10; reconstructed).
        seg: cross-entropy weight of our segmentation head (used when logits and labels exist).
        ssim_window: SSIM window side (Text-IF: 48).

    Returns (forward):
        ``(total, terms)`` with detached unweighted ``fus_intensity``, ``fus_ssim``,
        ``fus_color``, ``fus_gradient``, ``seg_ce`` (when computed) and the weighted ``total``.
    """

    def __init__(self, *, intensity: float = 4.0, ssim: float = 1.0, color: float = 12.0, gradient: float = 10.0,
                 seg: float = 1.0, ssim_window: int = TESG_SSIM_WINDOW) -> None:
        super().__init__()
        self.weights = {"fus_intensity": intensity, "fus_ssim": ssim, "fus_color": color, "fus_gradient": gradient}
        self.seg_weight = seg
        self.ssim_window = ssim_window

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fused = output.fused.float()
        check_shape(fused, "B 3 H W", name="fused", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        rgb, thermal = rgb.float(), thermal.float()
        terms = {
            "fus_intensity": tesg_intensity(fused, rgb, thermal),
            "fus_ssim": tesg_ssim(fused, rgb, thermal, self.ssim_window),
            "fus_color": tesg_color(fused, rgb),
            "fus_gradient": tesg_gradient(fused, rgb, thermal),
        }
        return weighted_total(terms, self.weights, output, labels, self.seg_weight)
