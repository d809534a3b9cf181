"""Loss settings, one small dataclass per ``loss.kind``.

Why one class per kind instead of one flat section: each objective reads a handful of weights,
and a flat union of all of them (about 30 fields) let a CMFS recipe carry S4Fusion's SSIM
weight or a teacher file that nothing reads. Here the ``kind`` key of the ``loss:`` section
picks the class (:func:`ivf_training.config.schema.tagged_classes`), a key that belongs to
another kind is an error naming that kind, and the written ``config.yaml`` holds only what the
run used. The YAML layout is unchanged: ``loss: {kind: cmfs, gamma: 0.8, ...}``.

The definitions of the terms live with the losses: :mod:`ivf_training.losses` (s4fusion),
:mod:`ivf_training.cmfs_losses` and :mod:`ivf_training.mafs_losses`; the objective of each kind
(what a batch means, which loss module it builds) in :mod:`ivf_training.objectives`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ivf_training.config.schema import ConfigError

__all__ = [
    "LossSettings",
    "S4FusionLossConfig",
    "CMFSLossConfig",
    "MAFSStage1LossConfig",
    "MAFSStage2LossConfig",
    "UPFusionLossConfig",
    "TeSGLossConfig",
    "FusedSegTeacherLossConfig",
    "LossConfig",
    "LEGACY_LOSS_SETTINGS",
    "LEGACY_LOSS_CONVERSIONS",
]


class LossSettings:
    """What every kind's settings offer the run configuration (the base of the dataclasses)."""

    path_fields: ClassVar[tuple[str, ...]] = ()
    """Weight-file settings, made absolute against the working directory when loading."""

    def check_run(self, *, best_metric: str, num_classes: int) -> None:
        """Checks against the rest of the run configuration (the kind's own ranges are checked
        when the section is built)."""


def _non_negative(section: object, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(section, name) < 0:
            raise ConfigError(f"loss.{name} must be >= 0, got {getattr(section, name)}")


@dataclass
class S4FusionLossConfig(LossSettings):
    """``kind: s4fusion``: cross-entropy plus S4Fusion's fusion terms (``FusionSegLoss``).

    The defaults are our CPU setting (what the bundled weights were trained with, and what a
    resumed older run reads back); the paper recipes set the paper's: ``source_weights: resnet``,
    ``ssim: 15``, ``gradient: 15``, ``gradient_sobel: raw``, ``perception: 15``,
    ``perception_texture: 0``. Definitions and the reason of each switch: :mod:`ivf_training.losses`.

    Attributes:
        seg: cross-entropy weight (ignore index 255).
        fusion: multiplier of the whole fusion group (intensity + ssim + gradient + color).
        intensity: L1 term: ω-weighted L1 to each source (``resnet``) or L1 to ``max(Y_vi, IR)``.
        ssim: α of the SSIM term: ω-weighted ``1 − SSIM`` per source (``resnet``) or equal weights.
        gradient: β of ``L1(|∇Y_F|, max(|∇Y_vi|, |∇IR|))``.
        color: L1 between the fused and the visible CbCr (our addition: the model outputs RGB).
        source_weights: ``resnet`` (paper: ω1, ω2 from the ResNet-50's features; needs
            ``resnet50_weights``) or ``max`` (ours: no ResNet-50 needed on a CPU).
        omega_c: the scale constant c of ``softmax(g_ir/c, g_vi/c)`` (U2Fusion's value for
            visible-infrared, 3200; S4Fusion's own value is in its unreleased training script).
        gradient_sobel: ``raw`` (public code: integer Sobel kernels, zero padding) or
            ``normalized`` (ours: kernels / 8, replicate padding: no false border edges).
        perception: γ of the entropy (nats) of the ResNet-50's class distribution on the fused
            image; used only when ``resnet50_weights`` is set. Ours 0.0145 = 0.1 / ln 1000 (0.1
            on the entropy normalised to [0, 1]).
        perception_texture: weight of our Sobel texture term that keeps the entropy in check
            (not in the public loss; 0 in the paper recipes).
        resnet50_weights: local torchvision ResNet-50 weight file (.safetensors, or a .pth state
            dict loaded with ``weights_only=True``); ``None`` skips the perception terms.
        seg_class_weights: ``null`` (paper: every class weighs 1) or one weight per class for
            the cross-entropy (ours: the CPU default's later stages weigh the thin, rare classes
            up; see ``FusionSegLoss``).
    """

    kind: Literal["s4fusion"] = "s4fusion"
    seg: float = 1.0
    fusion: float = 1.0
    intensity: float = 1.0
    ssim: float = 1.0
    gradient: float = 15.0
    color: float = 1.0
    source_weights: Literal["resnet", "max"] = "max"
    omega_c: float = 3200.0
    gradient_sobel: Literal["raw", "normalized"] = "normalized"
    perception: float = 0.0145
    perception_texture: float = 1.0
    resnet50_weights: str | None = None
    seg_class_weights: list[float] | None = None

    path_fields: ClassVar[tuple[str, ...]] = ("resnet50_weights",)

    def __post_init__(self) -> None:
        _non_negative(self, ("seg", "fusion", "intensity", "ssim", "gradient", "color", "perception",
                             "perception_texture"))
        if self.seg_class_weights is not None and (
                not self.seg_class_weights or min(self.seg_class_weights) < 0 or max(self.seg_class_weights) <= 0):
            raise ConfigError(f"loss.seg_class_weights must be non-negative with at least one > 0, "
                              f"got {self.seg_class_weights}")
        if self.omega_c <= 0:
            raise ConfigError(f"loss.omega_c must be > 0, got {self.omega_c}")
        if self.source_weights == "resnet" and self.resnet50_weights is None:
            raise ConfigError(
                "loss.source_weights: resnet estimates the per-source weights with an ImageNet ResNet-50: set "
                "loss.resnet50_weights to a local torchvision resnet50 weight file (e.g. resnet50-11ad3fa6.pth), "
                "or use loss.source_weights: max"
            )

    def check_run(self, *, best_metric: str, num_classes: int) -> None:
        if self.seg_class_weights is not None and len(self.seg_class_weights) != num_classes:
            raise ConfigError(f"loss.seg_class_weights has {len(self.seg_class_weights)} weights but the model has "
                              f"{num_classes} classes (model.num_classes)")


@dataclass
class CMFSLossConfig(LossSettings):
    """``kind: cmfs`` (``CMFSLoss``): ``seg·CE + fusion·(intensity·L_int + color·L_color +
    gradient·L_grad) + moe_balance·L_bal``, with the visible image gamma-corrected by ``gamma``
    and the thermal contrast scaled by ``beta``.

    Attributes:
        seg, fusion, intensity, color, gradient: term weights (paper: 1, 0.1, 0.5, 1, 0.2).
        gamma: CMFS's visible gamma (0.5 MFNet/PST900, 0.8 FMB).
        beta: CMFS's thermal contrast factor (1.7 MFNet, 1.0 FMB, 1.8 PST900).
        moe_balance: weight of CMFS's mixture-of-experts load-balancing term (in neither the
            paper nor the public code: 0 in the paper recipes).
        gradient_form: ``public`` (the public code's signed, unnormalised Sobel per axis, which
            the paper's weight 0.2 was tuned with) or ``magnitude`` (our 1/8-normalised Sobel
            magnitude, about 4x weaker at the same weight); see ``ivf_training.cmfs_losses``.
    """

    kind: Literal["cmfs"] = "cmfs"
    seg: float = 1.0
    fusion: float = 1.0
    intensity: float = 1.0
    color: float = 1.0
    gradient: float = 15.0
    gamma: float = 0.5
    beta: float = 1.7
    moe_balance: float = 0.01
    gradient_form: Literal["public", "magnitude"] = "public"

    def __post_init__(self) -> None:
        if self.gamma <= 0 or self.beta < 0:
            raise ConfigError(f"loss.gamma must be > 0 and loss.beta >= 0, got {self.gamma} and {self.beta}")


@dataclass
class MAFSStage1LossConfig(LossSettings):
    """``kind: mafs_stage1``: masked reconstruction (``MAFSStage1Loss``).

    ``rec_intensity·L1 + rec_gradient·L1(∇)`` on the hidden pixels of both images, with
    ``mask_patch``-sized squares hidden at a ratio drawn from ``mask_ratio`` per sample and
    modality. Validation reports only ``loss/<term>`` (use ``best_metric: loss/total``,
    ``best_mode: min``).

    Attributes:
        mask_patch: side of a hidden square in pixels (paper: 32).
        mask_ratio: range of the hidden fraction of patches, ``0 <= lo <= hi <= 1``, ``hi > 0``.
        rec_intensity, rec_gradient: α1, α2 of the stage I loss (paper: 5, 5).
    """

    kind: Literal["mafs_stage1"] = "mafs_stage1"
    mask_patch: int = 32
    mask_ratio: tuple[float, float] = (0.25, 0.75)
    rec_intensity: float = 5.0
    rec_gradient: float = 5.0

    def __post_init__(self) -> None:
        if self.mask_patch < 1:
            raise ConfigError(f"loss.mask_patch must be >= 1 pixel, got {self.mask_patch}")
        lo, hi = self.mask_ratio
        if not (0.0 <= lo <= hi <= 1.0 and hi > 0.0):
            raise ConfigError(
                f"loss.mask_ratio must satisfy 0 <= min <= max <= 1 and max > 0, got {list(self.mask_ratio)}"
            )
        _non_negative(self, ("rec_intensity", "rec_gradient"))

    def check_run(self, *, best_metric: str, num_classes: int) -> None:
        if not best_metric.startswith("loss/"):
            raise ConfigError(
                f"best_metric '{best_metric}': MAFS stage I validation reports only the reconstruction loss; "
                "set best_metric: loss/total and best_mode: min"
            )


@dataclass
class MAFSStage2LossConfig(LossSettings):
    """``kind: mafs_stage2``: fusion + segmentation (``MAFSStage2Loss``).

    Fusion task ``intensity·L_int + gradient·L_grad`` (paper: 1 and 1 with the public code's
    gradient form; our earlier 5 and 8 with ``gradient_form: magnitude``), segmentation task
    ``seg·OHEM + seg_aux·aux + binary·BCE + boundary·L_bd + kd·KD``; both through the α-fair
    utility (``fair_alpha``) and weighted by DWA (``dwa_temperature``, ``dwa_period``).

    Attributes:
        intensity, gradient: fusion task weights.
        seg: OHEM cross-entropy weight.
        seg_aux: weight of the deep supervision of the transformer-decoder stages.
        binary, boundary: weights of the binary (foreground) and boundary heads.
        kd: weight of the distillation term (used only with ``teacher_weights``).
        kd_temperature: distillation temperature T (paper: 4).
        ohem_thresh: OHEM probability threshold; ``ohem_min_kept``: least pixels kept
            (``None``: 1/16 of the batch's pixels).
        boundary_width: half-width in pixels of the boundary target band.
        fair_alpha: α of the α-fair utility (paper: 0.8).
        dwa_temperature: DWA temperature (paper: 500).
        dwa_period: ``step`` (the paper's: per iteration) or ``epoch``: what one DWA period is.
        gradient_form: ``public`` (the public ``Fusionloss``: absolute unnormalised Sobel per
            axis, summed) or ``magnitude`` (our 1/8-normalised Sobel magnitude); see
            ``ivf_training.mafs_losses.MAFSStage2Loss``.
        teacher_weights: engine weights (``.safetensors`` + sidecar) of any segmentation model
            the registry builds, with the student's class count; it segments the fused image
            (frozen) for the KD term. ``None``: no distillation.
    """

    kind: Literal["mafs_stage2"] = "mafs_stage2"
    intensity: float = 1.0
    gradient: float = 15.0
    seg: float = 1.0
    seg_aux: float = 0.4
    binary: float = 1.0
    boundary: float = 1.0
    kd: float = 1.0
    kd_temperature: float = 4.0
    ohem_thresh: float = 0.7
    ohem_min_kept: int | None = None
    boundary_width: int = 1
    fair_alpha: float = 0.8
    dwa_temperature: float = 500.0
    dwa_period: Literal["step", "epoch"] = "step"
    teacher_weights: str | None = None
    gradient_form: Literal["public", "magnitude"] = "public"

    path_fields: ClassVar[tuple[str, ...]] = ("teacher_weights",)

    def __post_init__(self) -> None:
        _non_negative(self, ("seg", "intensity", "gradient", "seg_aux", "binary", "boundary", "kd", "fair_alpha"))
        for name in ("kd_temperature", "dwa_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"loss.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.ohem_thresh <= 1.0:
            raise ConfigError(f"loss.ohem_thresh is a probability in (0, 1], got {self.ohem_thresh}")
        if self.ohem_min_kept is not None and self.ohem_min_kept < 0:
            raise ConfigError(f"loss.ohem_min_kept must be >= 0 or null, got {self.ohem_min_kept}")
        if self.boundary_width < 1:
            raise ConfigError(f"loss.boundary_width must be >= 1 pixel, got {self.boundary_width}")

    def check_run(self, *, best_metric: str, num_classes: int) -> None:
        if num_classes == 0:
            raise ConfigError("loss.kind mafs_stage2 trains segmentation: model.num_classes must be > 0")


@dataclass
class UPFusionLossConfig(LossSettings):
    """``kind: upfusion`` (``UPFusionLoss``): the released code's fusion loss in one of its versions.

    Attributes:
        variant: ``paper`` (first upload: ``10·L_int + 10·L_grad``, max-intensity target) or
            ``code`` (HEAD: adds ``10·(1 − SSIM_w)``; visible target = channel mean).
        intensity, gradient, ssim: term weights (10 each in the release; ``ssim`` used by ``code``).
        seg: cross-entropy weight of our segmentation head (0 for fusion-only training).
    """

    kind: Literal["upfusion"] = "upfusion"
    variant: Literal["paper", "code"] = "paper"
    intensity: float = 10.0
    gradient: float = 10.0
    ssim: float = 10.0
    seg: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "code"):
            raise ConfigError(f"loss.variant must be paper or code, got {self.variant!r}")
        _non_negative(self, ("intensity", "gradient", "ssim", "seg"))


@dataclass
class TeSGLossConfig(LossSettings):
    """``kind: tesg`` (``TeSGLoss``): TeSG's four fusion terms and where each sample's guidance comes from.

    The term formulas and weights are **reconstructed** (TeSG's supplementary is unavailable):
    Text-IF's ``fusion_loss`` with its defaults, see :mod:`ivf_training.tesg_losses`.

    Attributes:
        intensity, ssim, color, gradient: term weights (Text-IF: 4, 1, 12, 10).
        ssim_window: SSIM window side (Text-IF: 48; crops must be at least this large).
        seg: cross-entropy weight of our segmentation head (0 for fusion-only training).
        guidance_cache: a folder written by ``ivf-train tesg-guidance`` holding the guidance of
            every ``data.train_folders`` / ``data.train_real`` / validation folder sample (a missing
            entry is an error); ``None``: those samples train with the model's fallback.
        scene_object_masks: generated scenes carry the scene generator's own object mask as M
            (with the model's fallback text); False: they train with the fallback.
        guidance_dropout: probability that a training batch runs with the fallback instead of
            its guidance, so the live fallback stays in distribution (our extension; 0 in the
            ``paper`` recipe).
    """

    kind: Literal["tesg"] = "tesg"
    intensity: float = 4.0
    ssim: float = 1.0
    color: float = 12.0
    gradient: float = 10.0
    ssim_window: int = 48
    seg: float = 1.0
    guidance_cache: str | None = None
    scene_object_masks: bool = True
    guidance_dropout: float = 0.0

    path_fields: ClassVar[tuple[str, ...]] = ("guidance_cache",)

    def __post_init__(self) -> None:
        _non_negative(self, ("intensity", "ssim", "color", "gradient", "seg"))
        if self.ssim_window < 1:
            raise ConfigError(f"loss.ssim_window must be >= 1, got {self.ssim_window}")
        if not 0.0 <= self.guidance_dropout <= 1.0:
            raise ConfigError(f"loss.guidance_dropout is a probability in [0, 1], got {self.guidance_dropout}")


@dataclass
class FusedSegTeacherLossConfig(LossSettings):
    """``kind: fused_seg_teacher``: train a segmentation network on *fused* images, the teacher
    that MAFS stage II distils from (the paper's SegNeXt "trained on fused images").

    A frozen fusion model (``fusion_weights``) fuses every pair; the trained model segments the
    fused image with cross-entropy (ignore 255). ``ivf_training.teacher`` has the details.

    Attributes:
        seg: cross-entropy weight.
        fusion_weights: engine weights (``.safetensors`` + sidecar) of the fusion model that
            makes the fused images (required).
        thermal_input: what the network receives as its second (thermal) input: ``fused`` (the
            fused image's luminance, so it sees the fused image only, as the paper's teacher)
            or ``thermal`` (the thermal image). Stage II feeds the teacher the same way (read
            from the exported teacher's sidecar).
    """

    kind: Literal["fused_seg_teacher"] = "fused_seg_teacher"
    seg: float = 1.0
    fusion_weights: str | None = None
    thermal_input: Literal["fused", "thermal"] = "fused"

    path_fields: ClassVar[tuple[str, ...]] = ("fusion_weights",)

    def __post_init__(self) -> None:
        _non_negative(self, ("seg",))
        if self.thermal_input not in ("fused", "thermal"):
            raise ConfigError(f"loss.thermal_input must be fused or thermal, got {self.thermal_input!r}")

    def check_run(self, *, best_metric: str, num_classes: int) -> None:
        if num_classes == 0:
            raise ConfigError("loss.kind fused_seg_teacher trains segmentation: model.num_classes must be > 0")
        if not self.fusion_weights:
            raise ConfigError("loss.kind fused_seg_teacher needs loss.fusion_weights: engine weights of the "
                              "fusion model whose fused images the teacher learns to segment")


LossConfig = (S4FusionLossConfig | CMFSLossConfig | MAFSStage1LossConfig | MAFSStage2LossConfig
              | UPFusionLossConfig | TeSGLossConfig | FusedSegTeacherLossConfig)
"""The ``loss:`` section: the member whose ``kind`` the section names (default ``s4fusion``)."""


LEGACY_LOSS_SETTINGS: dict[str, dict[str, Any]] = {
    "cmfs": {"gradient_form": "magnitude"},
    "mafs_stage2": {"gradient_form": "magnitude"},
}
"""Per ``loss.kind``, the values of settings added for the paper fidelity work (issue 15) that
runs written before them trained with; :func:`ivf_training.run_dir.read_run_config` fills them
in, so resuming an old run keeps its objective."""


def _s4fusion_perception_in_nats(loss: dict[str, Any]) -> dict[str, Any]:
    """Runs before issue 15 (recognisable by their missing ``gradient_sobel``) weighted the
    entropy normalised by ln(1000); the weight is now on nats, so the old weight is divided by it."""
    if "gradient_sobel" in loss or "perception" not in loss:
        return loss
    return {**loss, "perception": float(loss["perception"]) / math.log(1000.0)}


LEGACY_LOSS_CONVERSIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "s4fusion": _s4fusion_perception_in_nats,
}
"""Per ``loss.kind``, how a run's written ``loss:`` section (its kind's keys only) becomes today's
when a setting changed meaning rather than being added (added ones: :data:`LEGACY_LOSS_SETTINGS`);
:func:`ivf_training.run_dir.read_run_config` applies it before filling in the added settings."""
