"""UP-Fusion's fusion loss, in the two versions a recipe may choose (spec §1.6), plus our CE.

The paper writes ``L_grad + L_l1`` with ``L_l1 = Σ_M ‖F − I_M‖₁`` (eq. 5), but the released code
never trained with that sum; its versions are:

* ``paper`` — the first upload (6c47d2f): ``10·L_int + 10·L_grad`` with
  ``L_int = mean|F − max(I_A, I_B)|`` and ``L_grad = mean|S(F) − max(S(I_A), S(I_B))|``,
  ``S(x) = |Sobel_x * x| + |Sobel_y * x|`` (unnormalised kernels, zero padding). Equal weights are
  the paper's 1:1 up to scale, with the max-intensity target the authors actually used. Here the
  visible target I_A is the BT.601 luminance the network sees (our choice: consistent input and
  target).
* ``code`` — HEAD (cde6673): ``paper`` + ``10·(1 − SSIM_w)``, ``SSIM_w = w_A·SSIM(I_A, F) +
  w_B·SSIM(I_B, F)`` with ``w_M = mean S(I_M) / (mean S(I_A) + mean S(I_B))`` over the batch, SSIM
  with an 11×11 Gaussian (σ 1.5) applied as a zero-padded "same" convolution, C1 = 0.01²,
  C2 = 0.03², averaged over the map. As released, I_A is the plain mean of R, G and B (while the
  network input is BT.601 Y): kept in this mode.

F is the network's raw luminance (``aux["fused_y"]``, before Test.py's clamp), as the release
trains it; in eval, where ``aux`` is empty, the luminance of the fused image is used. Our
extension: ``seg · CE`` on labelled pixels when the model segments.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_perception.models.layers.sobel import sobel_magnitude
from ivf_training.loss_terms import weighted_total
from ivf_training.losses import gaussian_kernel1d

__all__ = ["UPFusionLoss", "sobel_l1", "ssim_same", "gradient_weighted_ssim", "UPFUSION_LOSS_VARIANTS"]

UPFUSION_LOSS_VARIANTS = ("paper", "code")


def sobel_l1(x: torch.Tensor) -> torch.Tensor:
    """The release's ``Sobelxy``: ``|Gx| + |Gy|``, unnormalised kernels, zero padding.

    Shape:
        x: (B, 1, H, W)  ->  (B, 1, H, W)
    """
    return sobel_magnitude(x, normalized=False, border="zeros")


def ssim_same(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM averaged over the whole map of a zero-padded "same" Gaussian filtering (the release's
    pytorch-ssim variant; our metrics' SSIM uses the valid region instead).

    Shape:
        x, y: (B, 1, H, W)  ->  scalar (mean over batch and pixels)
    """
    g = gaussian_kernel1d(window_size, sigma, dtype=x.dtype, device=x.device)
    k, pad = g.numel(), window_size // 2
    stack = torch.cat((x, y, x * x, y * y, x * y), dim=1)
    c = stack.shape[1]
    blurred = F.conv2d(stack, g.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, pad), groups=c)
    blurred = F.conv2d(blurred, g.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(pad, 0), groups=c)
    mu_x, mu_y, exx, eyy, exy = blurred.chunk(5, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * (exy - mu_x * mu_y) + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (exx - mu_x**2 + eyy - mu_y**2 + c2)
    return (num / den).mean()


def gradient_weighted_ssim(a: torch.Tensor, b: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """``w_A·SSIM(A, F) + w_B·SSIM(B, F)`` with weights from the batch's mean Sobel magnitudes."""
    ga, gb = sobel_l1(a).mean(), sobel_l1(b).mean()
    wa = ga / (ga + gb)
    return wa * ssim_same(a, fused) + (1 - wa) * ssim_same(b, fused)


class UPFusionLoss(nn.Module):
    """``intensity·L_int + gradient·L_grad (+ ssim·(1 − SSIM_w) in code) + seg·CE``.

    Args:
        variant: ``paper`` or ``code`` (module docstring).
        intensity, gradient, ssim: term weights (the release: 10 each).
        seg: cross-entropy weight of our segmentation head.

    Returns (forward):
        ``(total, terms)`` with detached unweighted terms ``fus_intensity``, ``fus_gradient``,
        ``fus_ssim`` (code), ``seg_ce`` (labels and logits present) and the weighted ``total``.
    """

    def __init__(self, variant: Literal["paper", "code"] = "paper", *, intensity: float = 10.0,
                 gradient: float = 10.0, ssim: float = 10.0, seg: float = 1.0) -> None:
        super().__init__()
        if variant not in UPFUSION_LOSS_VARIANTS:
            raise ValueError(f"UP-Fusion loss variant must be one of {UPFUSION_LOSS_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.weights = {"fus_intensity": intensity, "fus_gradient": gradient, "fus_ssim": ssim}
        self.seg_weight = seg

    def visible_target(self, rgb: torch.Tensor) -> torch.Tensor:
        """I_A: BT.601 Y (paper) or the plain channel mean (code, as released)."""
        return rgb.mean(dim=1, keepdim=True) if self.variant == "code" else rgb_to_gray(rgb)

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fused = output.aux.get("fused_y")
        fused = (fused if fused is not None else rgb_to_gray(output.fused)).float()
        check_shape(fused, "B 1 H W", name="fused luminance", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        a, b = self.visible_target(rgb.float()), thermal.float()
        terms = {
            "fus_intensity": F.l1_loss(fused, torch.maximum(a, b)),
            "fus_gradient": F.l1_loss(sobel_l1(fused), torch.maximum(sobel_l1(a), sobel_l1(b))),
        }
        if self.variant == "code":
            terms["fus_ssim"] = 1 - gradient_weighted_ssim(a, b, fused)
        return weighted_total(terms, self.weights, output, labels, self.seg_weight)
