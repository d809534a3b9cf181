"""Training losses: S4Fusion's fusion losses, its perception-enhanced loss, and segmentation CE.

Models never compute losses (STYLE); the trainer calls :class:`FusionSegLoss` on the model's
:class:`~ivf_perception.models.base.FusionSegOutput`.

Fusion terms (S4Fusion: L1 + SSIM + gradient, gradient weight 15), all on luminance because the
thermal image has no colour: ``Y_F`` is the BT.601 luminance of the fused RGB, ``Y_vi`` that of
the visible image, ``IR`` the thermal image.

* intensity: ``L1(Y_F, max(Y_vi, IR))`` — keep the brighter (more salient) source at each pixel.
* ssim: ``1 − (SSIM(Y_F, Y_vi) + SSIM(Y_F, IR)) / 2`` — structure of both sources.
* gradient: ``L1(|∇Y_F|, max(|∇Y_vi|, |∇IR|))`` with ``|∇| = |Gx| + |Gy|`` of a Sobel
  operator normalised by 1/8 (kornia's ``normalized=True``) and replicate padding, so image
  borders do not create false edges. With the normalisation, a step edge of height 1 has
  ``|∇| = 0.5``, and S4Fusion's weight 15 puts this term on the scale of the intensity and SSIM
  terms: on generated scenes, for fused = visible, thermal or mid-gray, L_grad is 0.01–0.06
  (15·L_grad ≈ 0.13–0.8) while L_int and L_ssim are 0.01–0.55.
* color (our addition): ``L1(CbCr_F, CbCr_vi)``. S4Fusion fuses luminance only and takes the
  colour from the visible image; our models output RGB directly, so without this term nothing
  ties the fused image's colours to the scene's.

Perception-enhanced loss (S4Fusion): the entropy of a frozen ImageNet ResNet-50's class
distribution on the fused image; lowering it makes the fused image less ambiguous to a
pretrained recogniser, which favours salient objects. Alone it can be lowered by inventing
texture, so a Sobel texture term keeps it in check: ``mean(relu(|∇Y_F| − max(|∇Y_vi|, |∇IR|)))``
penalises only edges stronger than both sources have (our reading of "kept in check by a Sobel
texture term"; the paper releases no training code).

Segmentation: cross-entropy with ignore index 255, averaged over the labelled pixels of the
batch; a batch without any labelled pixel (e.g. only real unlabelled pairs) contributes 0
instead of NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, TensorFileNotFoundError, read_tensor_file
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_ycbcr
from ivf_perception.models.layers.sobel import sobel_magnitude as _layer_sobel_magnitude
from ivf_training.augment import IGNORE_INDEX

__all__ = [
    "PerceptionWeightsError",
    "gaussian_kernel1d",
    "ssim",
    "sobel_magnitude",
    "intensity_loss",
    "ssim_loss",
    "gradient_loss",
    "color_loss",
    "segmentation_loss",
    "PerceptionLoss",
    "FusionSegLoss",
]

_log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptionWeightsError(IvfPerceptionError, ValueError):
    """The ResNet-50 weight file for the perception loss is missing, corrupt or mismatched."""


# --------------------------------------------------------------------------------------------
# building blocks


def gaussian_kernel1d(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian; the 2-D SSIM window is its outer product with itself.

    Shape:
        → (size,), summing to 1.
    """
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering without padding (one 1-D pass per axis).

    Separable passes cost 2·k instead of k² multiply-adds per pixel; on the CPU the backward of a
    depth-wise 11×11 convolution dominated a whole training step before this.
    """
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004), differentiable.

    Gaussian window (11, σ = 1.5), K1 = 0.01, K2 = 0.03, computed on the valid region only
    (no padding), so borders are not biased by invented values.

    Args:
        x, y: images in ``[0, data_range]``.

    Shape:
        x, y: (B, C, H, W) with H, W >= window_size → (B,)
    """
    check_shape(x, "B C H W", name="x")
    check_shape(y, "B C H W", name="y", B=x.shape[0], C=x.shape[1], H=x.shape[2], W=x.shape[3])
    if min(x.shape[-2:]) < window_size:
        raise ValueError(
            f"ssim needs images of at least {window_size}x{window_size} pixels, got "
            f"{x.shape[-2]}x{x.shape[-1]}; use larger crops"
        )
    g = gaussian_kernel1d(window_size, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stats = _blur_valid(torch.cat((x, y, x * x, y * y, x * y), 1), g)
    mu_x, mu_y, exx, eyy, exy = stats.chunk(5, dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """``|Gx| + |Gy|`` of a 1/8-normalised Sobel operator with replicate padding.

    The loss terms call the model library's Sobel op, so the gradients the fusion head extracts
    and the gradients the loss compares are the same operator.

    Shape:
        img: (B, C, H, W) → (B, C, H, W)
    """
    check_shape(img, "B C H W", name="img")
    return _layer_sobel_magnitude(img, normalized=True, border="replicate")


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return rgb_to_ycbcr(rgb)[:, :1]


# --------------------------------------------------------------------------------------------
# fusion terms


def intensity_loss(y_fused: torch.Tensor, y_vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """``L1(Y_F, max(Y_vi, IR))``.

    Shape:
        y_fused, y_vi, ir: (B, 1, H, W) → scalar
    """
    return F.l1_loss(y_fused, torch.maximum(y_vi, ir))


def ssim_loss(y_fused: torch.Tensor, y_vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """``1 − (SSIM(Y_F, Y_vi) + SSIM(Y_F, IR)) / 2``, averaged over the batch.

    Shape:
        y_fused, y_vi, ir: (B, 1, H, W) → scalar
    """
    return 1.0 - 0.5 * (ssim(y_fused, y_vi) + ssim(y_fused, ir)).mean()


def gradient_loss(y_fused: torch.Tensor, y_vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """``L1(|∇Y_F|, max(|∇Y_vi|, |∇IR|))`` with :func:`sobel_magnitude`.

    Shape:
        y_fused, y_vi, ir: (B, 1, H, W) → scalar
    """
    target = torch.maximum(sobel_magnitude(y_vi), sobel_magnitude(ir))
    return F.l1_loss(sobel_magnitude(y_fused), target)


def color_loss(fused: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """``L1(CbCr_F, CbCr_vi)``: the fused image keeps the visible image's colours.

    Shape:
        fused, rgb: (B, 3, H, W) → scalar
    """
    return F.l1_loss(rgb_to_ycbcr(fused)[:, 1:], rgb_to_ycbcr(rgb)[:, 1:])


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled pixels (255 ignored); 0 when no pixel is labelled.

    Shape:
        logits: (B, K, H, W), labels: (B, H, W) int64 → scalar
    """
    check_shape(logits, "B K H W", name="logits")
    check_shape(labels, "B H W", name="labels", B=logits.shape[0], H=logits.shape[2], W=logits.shape[3])
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (labels != IGNORE_INDEX).sum()
    return total / count.clamp(min=1)


# --------------------------------------------------------------------------------------------
# perception-enhanced loss


class PerceptionLoss(nn.Module):
    """S4Fusion's perception-enhanced loss with a frozen ImageNet ResNet-50.

    Args:
        resnet50_weights: a local torchvision ``resnet50`` state dict: ``.safetensors``, or a
            ``.pth``/``.pt`` file loaded with ``torch.load(weights_only=True)`` (the file
            torchvision downloads, ``resnet50-11ad3fa6.pth``, works as is). ``None`` disables
            the loss with a logged notice (no hub is reachable offline, and random ResNet
            weights would make the entropy meaningless).

    Raises:
        PerceptionWeightsError: the file is given but missing, corrupt or not a ResNet-50.

    Shape:
        fused, rgb: (B, 3, H, W), thermal: (B, 1, H, W) → dict of scalars
        ``per_entropy`` (mean entropy / log(1000), in [0, 1]) and ``per_texture``.
    """

    def __init__(self, resnet50_weights: str | Path | None) -> None:
        super().__init__()
        self.net: nn.Module | None = None
        if resnet50_weights is None:
            _log.info(
                "perception-enhanced loss skipped: no ResNet-50 weights given "
                "(set loss.resnet50_weights to a local torchvision resnet50 weight file to enable it)"
            )
        else:
            self.net = _load_resnet50(Path(resnet50_weights))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def enabled(self) -> bool:
        """Whether weights were loaded and the loss contributes."""
        return self.net is not None

    def train(self, mode: bool = True) -> PerceptionLoss:
        """Keep the frozen ResNet in eval mode (batch-norm statistics must not move)."""
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    def forward(self, fused: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.net is None:
            raise RuntimeError("PerceptionLoss is disabled (no weights); check .enabled before calling it")
        logits = self.net((fused - self.mean) / self.std).float()
        logp = logits.log_softmax(1)
        entropy = -(logp.exp() * logp).sum(1).mean() / math.log(logits.shape[1])
        y_f, y_vi = _luma(fused), _luma(rgb)
        ceiling = torch.maximum(sobel_magnitude(y_vi), sobel_magnitude(thermal))
        texture = F.relu(sobel_magnitude(y_f) - ceiling).mean()
        return {"per_entropy": entropy, "per_texture": texture}


def _load_resnet50(path: Path) -> nn.Module:
    """Build torchvision's resnet50 and load a local state dict without unpickling code."""
    hint = (
        "provide torchvision's ImageNet resnet50 weights (e.g. resnet50-11ad3fa6.pth, downloaded "
        "on a machine with internet access via torchvision.models.ResNet50_Weights.IMAGENET1K_V2) "
        "and set loss.resnet50_weights to its path, or set it to null to train without the "
        "perception loss"
    )
    try:
        state = read_tensor_file(path, what="ResNet-50 weights")
    except TensorFileNotFoundError as exc:
        raise PerceptionWeightsError(f"ResNet-50 weights not found: {path}; {hint}") from exc
    except TensorFileError as exc:
        raise PerceptionWeightsError(
            f"ResNet-50 weights are corrupt or not a plain state dict ({exc}); {hint}") from exc
    from torchvision.models import resnet50  # imported only when the loss is enabled

    net = resnet50(weights=None)
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PerceptionWeightsError(
            f"ResNet-50 weights {path} do not fit torchvision's resnet50: missing "
            f"{result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, unexpected "
            f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}; {hint}"
        )
    net.requires_grad_(False)
    return net.eval()


# --------------------------------------------------------------------------------------------
# combined


class FusionSegLoss(nn.Module):
    """Weighted sum of the fusion, perception and segmentation terms.

    Args:
        seg: cross-entropy weight.
        fusion: multiplier of the fusion group.
        intensity, ssim, gradient, color: weights inside the fusion group.
        perception: the perception loss module (``None`` or disabled → skipped).
        perception_weight: weight of the entropy term.
        perception_texture: weight of the texture term.

    Returns (forward):
        ``(total, terms)``: the scalar to back-propagate and a dict of detached named terms
        (``seg_ce``, ``fus_intensity``, ``fus_ssim``, ``fus_gradient``, ``fus_color``,
        ``per_entropy``, ``per_texture``, ``total``) for logging. Terms are unweighted; the
        total is weighted.
    """

    def __init__(self, *, seg: float = 1.0, fusion: float = 1.0, intensity: float = 1.0, ssim: float = 1.0,
                 gradient: float = 15.0, color: float = 1.0, perception: PerceptionLoss | None = None,
                 perception_weight: float = 0.1, perception_texture: float = 1.0) -> None:
        super().__init__()
        self.seg_weight = seg
        self.fusion_weight = fusion
        self.weights = {"fus_intensity": intensity, "fus_ssim": ssim, "fus_gradient": gradient, "fus_color": color}
        self.perception = perception if perception is not None and perception.enabled else None
        self.perception_weights = {"per_entropy": perception_weight, "per_texture": perception_texture}

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fused = output.fused.float()
        check_shape(fused, "B 3 H W", name="fused", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        y_f, y_vi = _luma(fused), _luma(rgb)
        terms: dict[str, torch.Tensor] = {
            "fus_intensity": intensity_loss(y_f, y_vi, thermal),
            "fus_ssim": ssim_loss(y_f, y_vi, thermal),
            "fus_gradient": gradient_loss(y_f, y_vi, thermal),
            "fus_color": color_loss(fused, rgb),
        }
        total = self.fusion_weight * sum(self.weights[k] * terms[k] for k in self.weights)
        if self.perception is not None:
            per = self.perception(fused, rgb, thermal)
            terms.update(per)
            total = total + sum(self.perception_weights[k] * per[k] for k in per)
        if output.logits is not None and labels is not None and self.seg_weight:
            terms["seg_ce"] = segmentation_loss(output.logits.float(), labels)
            total = total + self.seg_weight * terms["seg_ce"]
        terms["total"] = total
        return total, {k: v.detach() for k, v in terms.items()}
