"""MAFS training objectives: stage I masked reconstruction, stage II fusion + segmentation.

MAFS (Wang et al., IEEE TIP 2025, arXiv:2509.11817; official code ``Abraham-Einstein/MAFS``
ships the model only) trains in two stages (DESIGN §5):

* **Stage I** — a multi-modal masked autoencoder: whole 32×32 patches of the visible and the
  thermal image are hidden at a random ratio and the network reconstructs them; the loss is
  ``α1·L1 + α2·L1(∇)`` on the hidden patches only, α1 = α2 = 5 (:class:`MAFSStage1Loss`).
* **Stage II** — two tasks trained together (:class:`MAFSStage2Loss`): *fusion* (intensity max
  + Sobel gradient max) and *segmentation* (OHEM cross-entropy, deep supervision of the
  multi-stage transformer decoder, binary and boundary heads, and distillation from a teacher
  run on the fused image). The two task losses are passed through the α-fair utility
  (α = 0.8) and weighted by Dynamic Weight Average (T = 500).

Models never compute losses (STYLE); the model returns a
:class:`~ivf_perception.models.base.FusionSegOutput` whose ``aux`` carries the extra
predictions below. Each key is optional: when one is missing, its term is *skipped and reported*
in :attr:`LossTerms.absent` with the reason (and logged once), never silently replaced by 0.

``aux`` keys read in stage I (:class:`MAFSStage1Loss`):

==================  ===============================  ============================================
key                 shape                            meaning
==================  ===============================  ============================================
``recon_rgb``       (B, 3, H, W), [0, 1]             reconstruction of the (unmasked) visible image
``recon_thermal``   (B, 1, H, W), [0, 1]             reconstruction of the thermal image
``mask_rgb``        (B, 1, H, W) bool                patches hidden from the visible stream, when
                                                     the model draws the mask itself (a mask passed
                                                     to the loss takes precedence)
``mask_thermal``    (B, 1, H, W) bool                same for the thermal stream
==================  ===============================  ============================================

``aux`` keys read in stage II (:class:`MAFSStage2Loss`); lower resolutions are upsampled
bilinearly to the label map:

===================  ===============================  ===========================================
key                  shape                            meaning
===================  ===============================  ===========================================
``binary_logits``    (B, 1, h, w)                     foreground logit (class ≠ 0, "unlabelled"
                                                      is MFNet's background)
``boundary_logits``  (B, 1, h, w)                     class-boundary logit
``aux_logits``       list of (B, K, h_i, w_i)         class scores of the intermediate stages of
                                                      the multi-stage transformer decoder (the
                                                      final prediction stays ``output.logits``)
===================  ===============================  ===========================================

Stage II also uses ``output.fused`` (B, 3, H, W) and ``output.logits`` (B, K, H, W), and takes
the teacher's logits (B, K, h, w) as an argument (the teacher is a frozen segmentation model
run on the fused image by the trainer; it receives no gradient here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import ShapeError, check_shape
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_perception.models.layers.sobel import sobel_gradients
from ivf_training.augment import IGNORE_INDEX
from ivf_training.losses import gradient_loss, intensity_loss, ohem_cross_entropy, sobel_magnitude

__all__ = [
    "MAFS_STAGE1_AUX_KEYS",
    "MAFS_STAGE2_AUX_KEYS",
    "axis_gradient_loss",
    "random_patch_mask",
    "masked_reconstruction_terms",
    "masked_reconstruction_loss",
    "binary_target",
    "boundary_target",
    "balanced_bce_loss",
    "dice_loss",
    "boundary_loss",
    "kd_loss",
    "alpha_fair",
    "DynamicWeightAverage",
    "LossTerms",
    "MAFSStage1Loss",
    "MAFSStage2Loss",
]

_log = logging.getLogger(__name__)

# the ``aux`` keys each stage reads (tables above), for the model's tests and error messages
MAFS_STAGE1_AUX_KEYS: tuple[str, ...] = ("recon_rgb", "recon_thermal", "mask_rgb", "mask_thermal")
MAFS_STAGE2_AUX_KEYS: tuple[str, ...] = ("binary_logits", "boundary_logits", "aux_logits")


# --------------------------------------------------------------------------------------------
# stage I: masks and masked reconstruction


def random_patch_mask(batch: int, height: int, width: int, patch: int = 32,
                      ratio_range: tuple[float, float] = (0.25, 0.75),
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Masks of whole ``patch``×``patch`` squares on a grid anchored at the top-left corner.

    Each sample draws its ratio ``r ~ U(lo, hi)`` and hides ``k = round(r·n)`` of the
    ``n = ⌈H/patch⌉·⌈W/patch⌉`` grid cells, chosen uniformly without replacement. ``k`` is then
    clamped to ``[⌈lo·n⌉, ⌊hi·n⌋]`` (when that interval holds an integer), so the *patch* ratio
    ``k/n`` of every sample lies in ``ratio_range``. When H or W is not a multiple of ``patch``
    the last row/column of cells is cut at the border, so the *pixel* ratio of such a sample
    can differ slightly from ``k/n``. MAFS states a random ratio without its range; the default
    ``(0.25, 0.75)`` is our choice, centred on one half so that both modalities keep enough
    context.

    Args:
        batch, height, width: output size.
        patch: side of a masked square (MAFS: 32).
        ratio_range: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``.
        generator: random source for reproducible masks; it must live on ``device``.
        device: where the mask is created.

    Returns:
        ``True`` where a pixel is hidden (to be reconstructed).

    Shape:
        → (batch, 1, height, width) bool
    """
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= lo <= hi <= 1, got {ratio_range}")
    if patch < 1 or batch < 0 or height < 1 or width < 1:
        raise ValueError(
            f"random_patch_mask needs patch >= 1, batch >= 0 and a positive size, got patch={patch}, "
            f"batch={batch}, size={height}x{width}"
        )
    gh, gw = -(-height // patch), -(-width // patch)
    n = gh * gw
    ratio = lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)
    count = (ratio * n).round()
    k_lo, k_hi = math.ceil(lo * n - 1e-9), math.floor(hi * n + 1e-9)
    if k_lo <= k_hi:
        count = count.clamp(k_lo, k_hi)
    # the rank of i.i.d. uniform scores is a uniformly random permutation of the cells
    rank = torch.rand(batch, n, generator=generator, device=device).argsort(1).argsort(1)
    cells = (rank < count[:, None]).view(batch, 1, gh, gw)
    full = cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return full[..., :height, :width]


def masked_reconstruction_terms(pred: torch.Tensor, target: torch.Tensor,
                                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity and Sobel-gradient L1 of a reconstruction, averaged over the hidden pixels.

    With ``m`` the mask and ``x̂ = m·pred + (1 − m)·target`` (the reconstruction pasted into the
    visible context)::

        L_int  = Σ m·|pred − target|     / (C·Σm)
        L_grad = Σ m·| |∇x̂| − |∇target| | / (C·Σm)

    ``|∇|`` is :func:`~ivf_training.losses.sobel_magnitude`. Gradients at the rim of a hidden
    patch are taken on ``x̂``, i.e. against the true visible surroundings: the decoder is not
    asked to reproduce visible pixels, so the loss depends on ``pred`` only inside the mask (the
    official code multiplies both images by the mask before its gradient, which instead creates
    artificial edges along every patch border). Normalising by the number of hidden pixels,
    rather than by all pixels, keeps the loss scale independent of the masking ratio. Both terms
    are 0 when nothing is hidden.

    Args:
        pred: reconstruction.
        target: the original image.
        mask: ``True``/1 where hidden (bool or a {0, 1} float tensor).

    Shape:
        pred, target: (B, C, H, W), mask: (B, 1, H, W) → (scalar, scalar)
    """
    check_shape(pred, "B C H W", name="pred")
    b, c, h, w = pred.shape
    check_shape(target, "B C H W", name="target", B=b, C=c, H=h, W=w)
    check_shape(mask, "B 1 H W", name="mask", B=b, H=h, W=w)
    m = mask.to(pred.dtype)
    count = (m.sum() * c).clamp(min=1.0)
    intensity = (m * (pred - target).abs()).sum() / count
    pasted = m * pred + (1.0 - m) * target
    grad_err = (sobel_magnitude(pasted) - sobel_magnitude(target)).abs()
    gradient = (m * grad_err).sum() / count
    return intensity, gradient


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               alpha_intensity: float = 5.0, alpha_gradient: float = 5.0) -> torch.Tensor:
    """``α1·L_int + α2·L_grad`` of :func:`masked_reconstruction_terms` (MAFS: α1 = α2 = 5).

    Shape:
        pred, target: (B, C, H, W), mask: (B, 1, H, W) → scalar
    """
    intensity, gradient = masked_reconstruction_terms(pred, target, mask)
    return alpha_intensity * intensity + alpha_gradient * gradient


# --------------------------------------------------------------------------------------------
# stage II: targets of the binary and boundary heads


def binary_target(labels: torch.Tensor, background: int = 0) -> torch.Tensor:
    """Foreground map of a label map: 1 where the class is not ``background``, 255 kept.

    The multilabel supervision that MAFS adopts (semantic, binary, boundary) separates
    "anything of interest" from the background class (MFNet's class 0, "unlabelled").

    Shape:
        labels: (B, H, W) int → (B, H, W) int64 in {0, 1, 255}
    """
    check_shape(labels, "B H W", name="labels")
    fg = (labels != background).long()
    return torch.where(labels == IGNORE_INDEX, torch.full_like(fg, IGNORE_INDEX), fg)


def boundary_target(labels: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Class-boundary map: 1 where another labelled class lies within ``width`` pixels.

    A labelled pixel ``p`` is on a boundary when some labelled pixel ``q`` with
    ``max(|p_y − q_y|, |p_x − q_x|) <= width`` has a different class, so an edge between two
    classes becomes a band ``2·width`` pixels wide (``width`` on each side). Ignored pixels
    (255) stay 255 and never create a boundary (their class is unknown), nor does the image
    border. Computed with max/min pooling over a ``(2·width + 1)²`` window.

    Shape:
        labels: (B, H, W) int with classes < 255 → (B, H, W) int64 in {0, 1, 255}
    """
    check_shape(labels, "B H W", name="labels")
    if width < 1:
        raise ValueError(f"boundary width must be >= 1 pixel, got {width}")
    valid = labels != IGNORE_INDEX
    x = labels.to(torch.float32)[:, None]
    k = 2 * width + 1
    # ignored pixels must lose both the max and the min; the pooling's implicit padding is -inf
    low = torch.where(valid[:, None], x, torch.full_like(x, -1.0))
    high = torch.where(valid[:, None], x, torch.full_like(x, float(IGNORE_INDEX) + 1.0))
    nb_max = F.max_pool2d(low, k, stride=1, padding=width)
    nb_min = -F.max_pool2d(-high, k, stride=1, padding=width)
    edge = ((nb_max > x) | (nb_min < x))[:, 0].long()
    return torch.where(valid, edge, torch.full_like(edge, IGNORE_INDEX))


# --------------------------------------------------------------------------------------------
# stage II: segmentation terms


def balanced_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy: the mean of the per-class mean BCE.

    Foreground and boundary pixels are rare (a few percent of a street scene), so an unweighted
    BCE is minimised by predicting "background" everywhere. Weighting each pixel by
    ``w_c = N / (2·N_c)`` (``N`` labelled pixels, ``N_c`` of them in class c; King & Zeng's
    "balanced" weights, scikit-learn's ``class_weight="balanced"``) gives::

        L = (1/N) Σ_i w_{y_i} · BCE(x_i, y_i) = ½·mean_{y=1} BCE + ½·mean_{y=0} BCE,

    with ``BCE(x, 1) = ln(1 + e^{−x})`` and ``BCE(x, 0) = ln(1 + e^{x})``. When only one class is
    present in the batch, L is that class's mean; 0 when no pixel is labelled (255 = ignore).

    Shape:
        logits: (B, 1, H, W), target: (B, H, W) in {0, 1, 255} → scalar
    """
    check_shape(logits, "B 1 H W", name="logits")
    check_shape(target, "B H W", name="target", B=logits.shape[0], H=logits.shape[2], W=logits.shape[3])
    x = logits[:, 0]
    pos = (target == 1).to(x.dtype)
    neg = (target == 0).to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(x, pos, reduction="none")
    n_pos, n_neg = pos.sum(), neg.sum()
    mean_pos = (bce * pos).sum() / n_pos.clamp(min=1.0)
    mean_neg = (bce * neg).sum() / n_neg.clamp(min=1.0)
    present = (n_pos > 0).to(x.dtype) + (n_neg > 0).to(x.dtype)
    return (mean_pos + mean_neg) / present.clamp(min=1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image over the labelled pixels, averaged over the batch.

    ``1 − (2·Σ p·g + s) / (Σ p² + Σ g² + s)`` with ``p = sigmoid(logits)``, ``g`` the binary
    target and ``s = 1`` (STDC's detail loss, Fan et al. CVPR 2021). Dice depends on the overlap
    rather than on the pixel count, so it stays informative for thin, rare structures.

    Shape:
        logits: (B, 1, H, W), target: (B, H, W) in {0, 1, 255} → scalar
    """
    check_shape(logits, "B 1 H W", name="logits")
    check_shape(target, "B H W", name="target", B=logits.shape[0], H=logits.shape[2], W=logits.shape[3])
    valid = (target != IGNORE_INDEX).to(logits.dtype)
    p = torch.sigmoid(logits[:, 0]) * valid
    g = (target == 1).to(logits.dtype)
    inter = (p * g).flatten(1).sum(1)
    denom = (p * p).flatten(1).sum(1) + (g * g).flatten(1).sum(1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def boundary_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boundary-head loss: class-balanced BCE + soft Dice on the boundary map.

    STDC's detail loss (Fan et al., "Rethinking BiSeNet for Real-time Semantic Segmentation",
    CVPR 2021) supervises a boundary map with ``L_bce + L_dice`` because boundary pixels are
    extremely rare; we use the class-balanced BCE (:func:`balanced_bce_loss`) for the same
    reason, and :func:`dice_loss`. Targets come from :func:`boundary_target`.

    Shape:
        logits: (B, 1, H, W), target: (B, H, W) in {0, 1, 255} → scalar
    """
    return balanced_bce_loss(logits, target) + dice_loss(logits, target)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise distillation ``T²·KL(p_t ‖ p_s)`` on logits softened by ``T`` (Hinton et al.).

    ``p_s = softmax(z_s/T)``, ``p_t = softmax(z_t/T)`` per pixel over the classes, and::

        L = T² · mean_pixels Σ_c p_t,c · (ln p_t,c − ln p_s,c)

    The factor T² keeps the gradient scale independent of T (MAFS: T = 4). The teacher is
    detached (it is frozen) and resized bilinearly to the student's size when it differs.
    When ``labels`` are given, pixels labelled 255 are left out of the mean (0 if none is left).

    Shape:
        student: (B, K, H, W), teacher: (B, K, h, w), labels: (B, H, W) or None → scalar
    """
    check_shape(student, "B K H W", name="student")
    b, k, h, w = student.shape
    check_shape(teacher, "B K H W", name="teacher", B=b, K=k)
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    t = _resize(teacher.detach(), (h, w))
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    if labels is None:
        return kl.mean() * temperature**2
    check_shape(labels, "B H W", name="labels", B=b, H=h, W=w)
    valid = (labels != IGNORE_INDEX).to(kl.dtype)
    return (kl * valid).sum() / valid.sum().clamp(min=1.0) * temperature**2


def axis_gradient_loss(y_fused: torch.Tensor, y_vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """The public MAFS ``Fusionloss`` gradient term: ``Σ_a L1(|G_a Y_F|, max(|G_a Y_vi|, |G_a IR|))``
    over the two axes ``a``, with the unnormalised Sobel kernels and zero padding.

    Shape:
        y_fused, y_vi, ir: (B, 1, H, W) → scalar
    """
    gf, gv, gi = (sobel_gradients(x, normalized=False, border="zeros").abs() for x in (y_fused, y_vi, ir))
    per_axis = (gf - torch.maximum(gv, gi)).abs().mean(dim=(0, 1, 3, 4))  # (2,): x then y
    return per_axis.sum()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of score maps (no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# task weighting


def alpha_fair(loss: torch.Tensor, alpha: float = 0.8, eps: float = 1e-8) -> torch.Tensor:
    """α-fair utility of a (positive) task loss.

    ``U_α(ℓ) = ℓ^{1−α} / (1−α)`` for α ≠ 1 and ``ln ℓ`` for α = 1 (the α-fair family of Mo &
    Walrand, IEEE/ACM ToN 2000). Ban & Ji, "Fair Resource Allocation in Multi-Task Learning"
    (FairGrad, ICML 2024, arXiv:2402.15638) cast multi-task learning as α-fair utility
    maximisation and also apply the α-fair transform to the task losses of loss-weighting
    methods (DWA among them); MAFS does the latter with α = 0.8. Since
    ``dU/dℓ = ℓ^{−α}``, task k's gradient is scaled by ``ℓ_k^{−α}``: α = 0 is the plain sum,
    α = 1 the scale-invariant log loss, and α in between damps a task whose loss is large only
    because of its units, without making it vanish. ``ℓ`` is clamped to ``eps`` first (the
    transform's slope is infinite at 0 for α > 0; below eps the gradient is 0).

    Shape:
        loss: any → same
    """
    if alpha < 0:
        raise ValueError(f"alpha-fairness needs alpha >= 0, got {alpha}")
    x = loss.clamp(min=eps)
    if alpha == 1.0:
        return x.log()
    return x.pow(1.0 - alpha) / (1.0 - alpha)


class DynamicWeightAverage(nn.Module):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    Task k's weight in period t follows how fast its loss fell over the two previous periods::

        r_k(t−1) = L_k(t−1) / L_k(t−2),    w_k(t) = K · exp(r_k(t−1)/T) / Σ_i exp(r_i(t−1)/T)

    ``L_k`` is the task's mean loss over a period (an epoch in the paper, or a single step), the
    weights sum to K, and ``w_k = 1`` until two periods have been recorded. A large T flattens
    the weights (MAFS: T = 500). Only the last two periods are kept; the history lives in
    buffers, so it is saved in and restored from the module's ``state_dict``.

    Usage: :meth:`weights` for the current period, :meth:`observe` after each step,
    :meth:`end_period` when a period (epoch or step) is over.

    Args:
        num_tasks: K.
        temperature: T.
        eps: floor of the denominator ``L_k(t−2)``.

    Shape:
        weights: → (K,) float32, no gradient
    """

    history: torch.Tensor
    periods: torch.Tensor
    acc_sum: torch.Tensor
    acc_count: torch.Tensor

    def __init__(self, num_tasks: int, temperature: float = 500.0, eps: float = 1e-12) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"DWA needs at least one task, got num_tasks={num_tasks}")
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        self.num_tasks = num_tasks
        self.temperature = temperature
        self.eps = eps
        # history[0] = L(t−2), history[1] = L(t−1)
        self.register_buffer("history", torch.zeros(2, num_tasks, dtype=torch.float64))
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))
        self.register_buffer("acc_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("acc_count", torch.zeros((), dtype=torch.long))

    def weights(self) -> torch.Tensor:
        """The task weights for the current period (ones before two periods are recorded)."""
        if int(self.periods) < 2:
            return torch.ones(self.num_tasks, device=self.history.device)
        rate = self.history[1] / self.history[0].clamp(min=self.eps)
        return (self.num_tasks * torch.softmax(rate / self.temperature, dim=0)).float()

    def observe(self, losses: torch.Tensor) -> None:
        """Add one step's task losses to the current period's mean (values only, no graph).

        Shape:
            losses: (K,)
        """
        check_shape(losses, "K", name="losses", K=self.num_tasks)
        self.acc_sum += losses.detach().to(self.acc_sum)
        self.acc_count += 1

    def end_period(self) -> bool:
        """Close the current period: its mean loss becomes ``L(t−1)``.

        Returns:
            False (and records nothing) when no step was observed in the period.
        """
        if int(self.acc_count) == 0:
            return False
        self.history[0] = self.history[1]
        self.history[1] = self.acc_sum / self.acc_count
        self.periods += 1
        self.acc_sum.zero_()
        self.acc_count.zero_()
        return True


# --------------------------------------------------------------------------------------------
# combined losses


class LossTerms(dict[str, torch.Tensor]):
    """The named terms of a loss (``total`` included) plus the terms that were skipped.

    A plain ``dict`` of tensors with one extra attribute, ``absent``: term name → why it was not
    computed (a missing ``aux`` key, no labels, no teacher). Terms keep their autograd graph;
    ``terms["total"]`` is the scalar to back-propagate, the others are for logging (detach them).
    """

    def __init__(self, terms: Mapping[str, torch.Tensor] | None = None,
                 absent: Mapping[str, str] | None = None) -> None:
        super().__init__(terms or {})
        self.absent: dict[str, str] = dict(absent or {})


class _ReportsAbsent(nn.Module):
    """Logs each (term, reason) the first time a term is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self._reported: set[tuple[str, str]] = set()

    def _report(self, absent: Mapping[str, str]) -> None:
        for name, reason in absent.items():
            if (name, reason) not in self._reported:
                self._reported.add((name, reason))
                _log.info("%s: term %r skipped: %s", type(self).__name__, name, reason)


class MAFSStage1Loss(_ReportsAbsent):
    """Stage I: masked reconstruction of both modalities (:func:`masked_reconstruction_loss`).

    ``total = L_rec(recon_rgb, rgb, mask_rgb) + L_rec(recon_thermal, thermal, mask_thermal)``,
    each ``α1·L_int + α2·L_grad`` on the hidden pixels only.

    Args:
        alpha_intensity: α1 (MAFS: 5).
        alpha_gradient: α2 (MAFS: 5).

    Returns (forward):
        :class:`LossTerms` with ``rec_<m>_intensity``, ``rec_<m>_gradient``, ``rec_<m>``
        (weighted) for m in {rgb, thermal}, and ``total``. A modality whose reconstruction is
        missing from ``aux`` is listed in ``absent``.

    Raises:
        KeyError: neither reconstruction is in ``output.aux``, or a reconstruction has no mask.
    """

    def __init__(self, alpha_intensity: float = 5.0, alpha_gradient: float = 5.0) -> None:
        super().__init__()
        self.alpha_intensity = alpha_intensity
        self.alpha_gradient = alpha_gradient

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                mask_rgb: torch.Tensor | None = None, mask_thermal: torch.Tensor | None = None) -> LossTerms:
        check_shape(rgb, "B 3 H W", name="rgb")
        check_shape(thermal, "B 1 H W", name="thermal", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        if "recon_rgb" not in output.aux and "recon_thermal" not in output.aux:
            raise KeyError(
                "MAFSStage1Loss needs output.aux['recon_rgb'] and/or output.aux['recon_thermal'] "
                f"(the masked-autoencoder reconstructions; stage-I keys: {MAFS_STAGE1_AUX_KEYS}), got aux "
                f"keys {sorted(output.aux)}; build the model in its stage-I (reconstruction) mode"
            )
        terms: dict[str, torch.Tensor] = {}
        absent: dict[str, str] = {}
        total = torch.zeros((), device=rgb.device)
        for name, target, mask in (("rgb", rgb, mask_rgb), ("thermal", thermal, mask_thermal)):
            key = f"recon_{name}"
            if key not in output.aux:
                absent[f"rec_{name}"] = f"output.aux has no {key!r}"
                continue
            if mask is None:
                mask = output.aux.get(f"mask_{name}")
            if mask is None:
                raise KeyError(
                    f"no mask for the {name} reconstruction: pass mask_{name}= to the loss (e.g. from "
                    f"random_patch_mask) or return it as output.aux['mask_{name}']"
                )
            pred = output.aux[key].float()
            check_shape(pred, "B C H W", name=f"output.aux[{key!r}]", B=target.shape[0],
                        C=target.shape[1], H=target.shape[2], W=target.shape[3])
            intensity, gradient = masked_reconstruction_terms(pred, target.float(), mask)
            weighted = self.alpha_intensity * intensity + self.alpha_gradient * gradient
            terms.update({f"rec_{name}_intensity": intensity, f"rec_{name}_gradient": gradient,
                          f"rec_{name}": weighted})
            total = total + weighted
        terms["total"] = total
        self._report(absent)
        return LossTerms(terms, absent)


class MAFSStage2Loss(_ReportsAbsent):
    """Stage II: fusion and segmentation tasks, α-fair transformed and weighted by DWA.

    Task losses (unweighted terms in brackets are reported under these names)::

        L_fus = w_int·[fus_intensity] + w_grad·[fus_gradient]
        L_seg = w_ce·[seg_ohem] + w_aux·[seg_aux] + w_bin·[seg_binary]
                + w_bd·[seg_boundary] + w_kd·[seg_kd]
        total = λ_fus·U_α(L_fus) + λ_seg·U_α(L_seg)

    * ``fus_intensity = L1(Y_F, max(Y_vi, IR))`` (:func:`~ivf_training.losses.intensity_loss`)
      on BT.601 luminance, and ``fus_gradient`` in one of two forms (``gradient_form``):
      ``"public"`` — :func:`axis_gradient_loss`, the public ``Fusionloss``'s term (absolute
      unnormalised Sobel per axis, zero padding, the two axes summed), used by the paper
      recipes with the paper's weights 1 : 1; ``"magnitude"`` — our earlier
      :func:`~ivf_training.losses.gradient_loss` (1/8-normalised ``|Gx| + |Gy|``), which with
      weights 5 : 8 imitated the public ``5·L_int + L_grad`` (the paper states 1 : 1).
    * ``seg_ohem``: :func:`ohem_cross_entropy` of ``output.logits``; ``seg_aux``: its mean over
      ``aux['aux_logits']`` (deep supervision of the decoder stages; weight 0.4 as for PSPNet's
      auxiliary loss, our choice); ``seg_binary``: :func:`balanced_bce_loss` of
      ``aux['binary_logits']`` against :func:`binary_target`; ``seg_boundary``:
      :func:`boundary_loss` of ``aux['boundary_logits']`` against :func:`boundary_target`;
      ``seg_kd``: :func:`kd_loss` of ``output.logits`` against the teacher (T = 4).
    * ``U_α`` is :func:`alpha_fair` (α = 0.8) and ``λ`` the :class:`DynamicWeightAverage`
      weights (T = 500), reported as ``dwa_fusion`` and ``dwa_segmentation``. DWA's rates use
      the raw task losses, not ``U_α`` of them: ``U_α`` is negative for α > 1 below ℓ = 1, where
      a ratio of utilities means nothing.

    Terms that cannot be computed are listed in ``LossTerms.absent`` and left out; if no
    segmentation term is left (no labels, no teacher), ``total`` is the fusion task alone and
    DWA records nothing for that step. DWA records only in training mode (``.train()``), so
    validation passes do not move it.

    Args:
        fusion_intensity, fusion_gradient: w_int, w_grad.
        seg_ce, seg_aux, binary, boundary, kd: w_ce, w_aux, w_bin, w_bd, w_kd.
        kd_temperature: T of the distillation.
        ohem_thresh, ohem_min_kept: see :func:`ohem_cross_entropy`.
        boundary_width: see :func:`boundary_target`.
        background_class: the class that is not foreground (:func:`binary_target`).
        alpha: α of :func:`alpha_fair`.
        dwa_temperature: T of DWA.
        dwa_period: ``"step"`` — each training step is a DWA period (the paper's: weights
            updated per iteration); ``"epoch"`` — the trainer calls :meth:`end_epoch` after each
            epoch (the original DWA paper's period; our earlier recipes).
        gradient_form: ``"public"`` or ``"magnitude"`` (above).

    Returns (forward):
        :class:`LossTerms` with the terms named above, ``fusion``, ``segmentation`` (task
        losses before ``U_α``), ``dwa_fusion``, ``dwa_segmentation`` and ``total``.
    """

    TASKS: tuple[str, str] = ("fusion", "segmentation")

    def __init__(self, *, fusion_intensity: float = 1.0, fusion_gradient: float = 1.0, seg_ce: float = 1.0,
                 seg_aux: float = 0.4, binary: float = 1.0, boundary: float = 1.0, kd: float = 1.0,
                 kd_temperature: float = 4.0, ohem_thresh: float = 0.7, ohem_min_kept: int | None = None,
                 boundary_width: int = 1, background_class: int = 0, alpha: float = 0.8,
                 dwa_temperature: float = 500.0, dwa_period: Literal["step", "epoch"] = "step",
                 gradient_form: Literal["public", "magnitude"] = "public") -> None:
        super().__init__()
        if dwa_period not in ("step", "epoch"):
            raise ValueError(f"dwa_period must be 'step' or 'epoch', got {dwa_period!r}")
        if gradient_form not in ("public", "magnitude"):
            raise ValueError(f"gradient_form must be 'public' or 'magnitude', got {gradient_form!r}")
        self.gradient_form = gradient_form
        if alpha < 0:
            raise ValueError(f"alpha-fairness needs alpha >= 0, got {alpha}")
        self.fusion_weights = {"fus_intensity": fusion_intensity, "fus_gradient": fusion_gradient}
        self.seg_weights = {"seg_ohem": seg_ce, "seg_aux": seg_aux, "seg_binary": binary,
                            "seg_boundary": boundary, "seg_kd": kd}
        self.kd_temperature = kd_temperature
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.boundary_width = boundary_width
        self.background_class = background_class
        self.alpha = alpha
        self.dwa_period = dwa_period
        self.dwa = DynamicWeightAverage(len(self.TASKS), temperature=dwa_temperature)

    def end_epoch(self) -> None:
        """Close a DWA period when ``dwa_period="epoch"`` (nothing to do per epoch otherwise)."""
        if self.dwa_period == "epoch":
            self.dwa.end_period()

    def forward(self, output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor,
                labels: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None) -> LossTerms:
        """Shape: rgb (B, 3, H, W), thermal (B, 1, H, W), labels (B, H, W) int64 or None,
        teacher_logits (B, K, h, w) or None; model outputs as in the module docstring."""
        fused = output.fused.float()
        check_shape(rgb, "B 3 H W", name="rgb")
        b, _, h, w = rgb.shape
        check_shape(thermal, "B 1 H W", name="thermal", B=b, H=h, W=w)
        check_shape(fused, "B 3 H W", name="output.fused", B=b, H=h, W=w)
        if labels is not None:
            check_shape(labels, "B H W", name="labels", B=b, H=h, W=w)
        terms: dict[str, torch.Tensor] = {}
        absent: dict[str, str] = {}

        y_f, y_vi, ir = rgb_to_gray(fused), rgb_to_gray(rgb.float()), thermal.float()
        terms["fus_intensity"] = intensity_loss(y_f, y_vi, ir)
        terms["fus_gradient"] = (axis_gradient_loss(y_f, y_vi, ir) if self.gradient_form == "public"
                                 else gradient_loss(y_f, y_vi, ir))
        fusion = sum(wt * terms[k] for k, wt in self.fusion_weights.items())
        terms["fusion"] = fusion

        terms.update(self._segmentation_terms(output, labels, teacher_logits, absent))
        present = [k for k in self.seg_weights if k in terms]
        segmentation = sum(self.seg_weights[k] * terms[k] for k in present) if present else None

        weights = self.dwa.weights().to(fused.device)
        terms["dwa_fusion"], terms["dwa_segmentation"] = weights[0], weights[1]
        total = weights[0] * alpha_fair(fusion, self.alpha)
        if segmentation is None:
            absent["segmentation"] = "no segmentation term could be computed (see the other absent terms)"
        else:
            terms["segmentation"] = segmentation
            total = total + weights[1] * alpha_fair(segmentation, self.alpha)
            if self.training:
                self.dwa.observe(torch.stack((fusion.detach(), segmentation.detach())))
                if self.dwa_period == "step":
                    self.dwa.end_period()
        terms["total"] = total
        self._report(absent)
        return LossTerms(terms, absent)

    def _segmentation_terms(self, output: FusionSegOutput, labels: torch.Tensor | None,
                            teacher_logits: torch.Tensor | None, absent: dict[str, str]) -> dict[str, torch.Tensor]:
        """The unweighted segmentation terms that the inputs allow; the rest go to ``absent``."""
        terms: dict[str, torch.Tensor] = {}
        logits = None if output.logits is None else output.logits.float()
        no_logits = "output.logits is None (fusion-only output)"
        no_labels = "no labels given"

        if logits is None:
            absent["seg_ohem"] = no_logits
        elif labels is None:
            absent["seg_ohem"] = no_labels
        else:
            terms["seg_ohem"] = self._ohem(logits, labels)

        aux_logits: Sequence[torch.Tensor] = output.aux.get("aux_logits") or ()
        if not aux_logits:
            absent["seg_aux"] = "output.aux has no 'aux_logits'"
        elif labels is None:
            absent["seg_aux"] = no_labels
        else:
            size = tuple(labels.shape[-2:])
            stages = []
            for i, stage in enumerate(aux_logits):
                check_shape(stage, "B K H W", name=f"output.aux['aux_logits'][{i}]", B=labels.shape[0],
                            K=None if logits is None else logits.shape[1])
                stages.append(self._ohem(_resize(stage.float(), size), labels))
            terms["seg_aux"] = torch.stack(stages).mean()

        for name, key, target_fn, loss_fn in (
            ("seg_binary", "binary_logits", lambda y: binary_target(y, self.background_class), balanced_bce_loss),
            ("seg_boundary", "boundary_logits", lambda y: boundary_target(y, self.boundary_width), boundary_loss),
        ):
            head = output.aux.get(key)
            if head is None:
                absent[name] = f"output.aux has no {key!r}"
            elif labels is None:
                absent[name] = no_labels
            else:
                terms[name] = loss_fn(self._one_channel(head, key, labels), target_fn(labels))

        if teacher_logits is None:
            absent["seg_kd"] = "no teacher logits given"
        elif logits is None:
            absent["seg_kd"] = no_logits
        else:
            terms["seg_kd"] = kd_loss(logits, teacher_logits.float(), self.kd_temperature, labels)
        return terms

    def _ohem(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, labels, thresh=self.ohem_thresh, min_kept=self.ohem_min_kept)

    @staticmethod
    def _one_channel(head: torch.Tensor, key: str, labels: torch.Tensor) -> torch.Tensor:
        """Check a binary/boundary head's logits and resize them to the label map."""
        if head.dim() != 4 or head.shape[1] != 1 or head.shape[0] != labels.shape[0]:
            raise ShapeError(
                f"output.aux[{key!r}]: expected one logit channel (B={labels.shape[0]}, 1, h, w), got shape "
                f"{tuple(head.shape)}; for a two-class head pass logits[:, 1:] - logits[:, :1]"
            )
        return _resize(head.float(), tuple(labels.shape[-2:]))
