"""Training objectives: what one batch means to the trainer (forward passes + loss).

Why a separate object: the trainer owns everything recipes share (optimiser, schedule, AMP,
logging, validation metrics, checkpoints), while recipes differ in how a batch becomes a loss.
S4Fusion and CMFS run one forward pass and compare its output with the inputs and labels;
MAFS stage I hides patches of both images and trains a reconstruction path instead; MAFS stage
II adds a frozen teacher that segments the fused image. Each of these is one small class here,
selected by ``loss.kind`` (:func:`objective_class`), instead of special cases in the trainer.

What differs between kinds is asked of the objective through hooks: which loss module the
settings describe (:meth:`Objective.build_loss`), what the model must offer and what stays
frozen (:meth:`Objective.prepare`), which module is the training path
(:meth:`Objective.training_module`), what happens at an epoch's end, which loss state a
checkpoint carries, whether validation scores outputs, and whether a run can be exported.

An objective receives the model and the loss module on every call rather than keeping them:
the trainer stays their owner (device, train/eval mode, replacement in tests), and the
objective holds only what is its own (mask settings, the teacher).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.engine.weights import build_model_from_weights, read_sidecar
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.guidance import Guidance
from ivf_perception.models.base import FusionSegOutput
from ivf_training.cmfs_losses import CMFSLoss
from ivf_training.config import (
    CMFSLossConfig,
    ConfigError,
    FusedSegTeacherLossConfig,
    LossConfig,
    LossSettings,
    MAFSStage1LossConfig,
    MAFSStage2LossConfig,
    S4FusionLossConfig,
    TeSGLossConfig,
    UPFusionLossConfig,
)
from ivf_training.datasets.guidance import GUIDANCE_CACHE, GUIDANCE_NONE
from ivf_training.losses import FusionSegLoss, load_resnet50_probe
from ivf_training.mafs_losses import MAFSStage1Loss, MAFSStage2Loss, random_patch_mask
from ivf_training.teacher import SegmentationOnlyLoss, teacher_input_of, teacher_inputs
from ivf_training.tesg_losses import TeSGLoss
from ivf_training.upfusion_losses import UPFusionLoss

__all__ = [
    "Objective",
    "SupervisedObjective",
    "S4FusionObjective",
    "CMFSObjective",
    "UPFusionObjective",
    "GuidedFusionObjective",
    "GuidedPath",
    "MaskedReconstructionObjective",
    "ReconstructionPath",
    "DistilledFusionSegObjective",
    "FusedInputSegObjective",
    "pad_to_multiple",
    "forward_full_size",
    "load_teacher",
    "load_fusion_source",
    "OBJECTIVES",
    "objective_class",
    "build_objective",
]

_log = logging.getLogger(__name__)

Autocast = Callable[[], AbstractContextManager[Any]]
"""A factory of the trainer's autocast context (mixed precision is the trainer's decision)."""

Terms = dict[str, torch.Tensor]

SettingsT = TypeVar("SettingsT", bound=LossSettings)
"""The loss settings class of one ``loss.kind`` (:mod:`ivf_training.config.losses`)."""


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom/right of ``x`` so H and W are multiples of ``multiple``.

    Shape:
        x: (B, C, H, W) → (B, C, ⌈H/m⌉·m, ⌈W/m⌉·m)
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def forward_full_size(model: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor, autocast: Autocast,
                      multiple: int | None = None) -> FusionSegOutput:
    """The model's output for images of any size: padded to ``multiple`` (default the model's
    ``input_multiple``; pass it for a wrapped model, e.g. under DDP), cropped back, in float32
    for the metrics.

    Shape:
        rgb (B, 3, H, W), thermal (B, 1, H, W) → fused (B, 3, H, W), logits (B, K, H, W) or None
    """
    h, w = rgb.shape[-2:]
    if multiple is None:
        multiple = int(getattr(model, "input_multiple", 1))
    with autocast():
        out = model(pad_to_multiple(rgb, multiple), pad_to_multiple(thermal, multiple))
    out.fused = out.fused[..., :h, :w].float()
    if out.logits is not None:
        out.logits = out.logits[..., :h, :w].float()
    return out


def _detached(terms: Mapping[str, torch.Tensor]) -> Terms:
    return {k: v.detach() for k, v in terms.items()}


class Objective(abc.ABC, Generic[SettingsT]):
    """Forward pass(es) and loss of one batch, for training and for validation.

    Attributes:
        kind: the ``loss.kind`` this objective serves.
        scores_outputs: validation computes mIoU and the fusion metrics from the returned
            output; False where the objective has no fused image or segmentation (MAFS stage I),
            so only ``loss/<term>`` is reported.
        export_refusal: why a run of this kind cannot be exported as engine weights (its fused
            and segmentation outputs were never trained), or None when it can.
    """

    kind: ClassVar[str]
    scores_outputs: ClassVar[bool] = True
    export_refusal: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, lc: SettingsT, num_classes: int) -> Objective[SettingsT]:
        """The objective of the settings ``lc`` (of this class's kind) for a model segmenting
        ``num_classes`` classes; files it needs (a teacher) are loaded here, before any run
        directory is written."""
        return cls()

    @classmethod
    @abc.abstractmethod
    def build_loss(cls, lc: SettingsT) -> nn.Module:
        """The loss module the settings ``lc`` describe (the trainer owns it: device, mode)."""

    def prepare(self, model: nn.Module) -> None:
        """Check that ``model`` suits the objective and freeze what it does not train; called
        once, before the optimiser collects the trainable parameters."""

    def to(self, device: torch.device) -> Objective:
        """Move the objective's own modules (a teacher) to ``device``."""
        return self

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module whose ``forward`` is the training path; the trainer wraps it for data
        parallelism (DDP synchronises gradients only of passes through the wrapper's forward)."""
        return model

    @abc.abstractmethod
    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        """The loss to back-propagate and its detached named terms (``total`` included).

        Args:
            model: :meth:`training_module` of the model, possibly wrapped (DDP).

            valid: (B, H, W) bool, True on real pixels and False on the crop's padding (None:
                no padding); objectives whose loss can exclude the padding take it (CMFS).

        Shape:
            rgb (B, 3, H, W), thermal (B, 1, H, W), labels (B, H, W) int64 (255 = ignore)
        """

    @abc.abstractmethod
    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int,
                        index: int) -> tuple[FusionSegOutput | None, Terms]:
        """One full-size validation image: the output cropped to the input size (None when
        ``scores_outputs`` is False) and the loss terms.

        Args:
            model: the bare model (not :meth:`training_module`).
            labels: None for an unlabelled image (its segmentation terms would dilute the means).
            multiple: the model's ``input_multiple``; inputs are padded to it.
            index: position of the image in the validation set, for reproducible randomness.
        """

    def end_epoch(self, loss_fn: nn.Module) -> None:
        """Called after the last step of each epoch."""

    def state_dict(self, loss_fn: nn.Module) -> dict[str, Any]:
        """Training state of the loss that a resumed run needs (tensors and plain data only)."""
        return {}

    def load_state_dict(self, loss_fn: nn.Module, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


class SupervisedObjective(Objective[SettingsT]):
    """One forward pass, ``loss_fn(output, rgb, thermal, labels) -> (total, terms)``.

    The base of ``loss.kind`` ``s4fusion`` and ``cmfs``: the model fuses and segments the batch,
    the loss compares the output with the inputs and the labels. The loss runs in float32
    outside autocast.
    """

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        with autocast():
            output = model(rgb, thermal)
        return loss_fn(output, rgb, thermal, labels)

    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int,
                        index: int) -> tuple[FusionSegOutput | None, Terms]:
        out = forward_full_size(model, rgb, thermal, autocast, multiple)
        _, terms = loss_fn(out, rgb, thermal, labels)
        return out, terms


class S4FusionObjective(SupervisedObjective[S4FusionLossConfig]):
    """``loss.kind: s4fusion``: :class:`~ivf_training.losses.FusionSegLoss`, with the frozen
    ResNet-50 (per-source weights, perception terms) when a weight file is configured."""

    kind = "s4fusion"

    @classmethod
    def build_loss(cls, lc: S4FusionLossConfig) -> nn.Module:
        uses_resnet = lc.source_weights == "resnet" or lc.perception > 0 or lc.perception_texture > 0
        probe = load_resnet50_probe(lc.resnet50_weights) if uses_resnet else None
        return FusionSegLoss(seg=lc.seg, fusion=lc.fusion, intensity=lc.intensity, ssim=lc.ssim,
                             gradient=lc.gradient, color=lc.color, source_weights=lc.source_weights,
                             omega_c=lc.omega_c, gradient_sobel=lc.gradient_sobel, probe=probe,
                             perception_weight=lc.perception, perception_texture=lc.perception_texture,
                             seg_class_weights=lc.seg_class_weights)


class CMFSObjective(SupervisedObjective[CMFSLossConfig]):
    """``loss.kind: cmfs``: :class:`~ivf_training.cmfs_losses.CMFSLoss`."""

    kind = "cmfs"

    @classmethod
    def build_loss(cls, lc: CMFSLossConfig) -> nn.Module:
        return CMFSLoss(seg=lc.seg, fusion=lc.fusion, intensity=lc.intensity, color=lc.color,
                        gradient=lc.gradient, gamma=lc.gamma, beta=lc.beta, moe_balance=lc.moe_balance,
                        gradient_form=lc.gradient_form)

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        with autocast():
            output = model(rgb, thermal)
        return loss_fn(output, rgb, thermal, labels, valid)


class UPFusionObjective(SupervisedObjective[UPFusionLossConfig]):
    """``loss.kind: upfusion``: :class:`~ivf_training.upfusion_losses.UPFusionLoss` (``paper`` or
    ``code`` version of the released loss, plus CE for our segmentation head)."""

    kind = "upfusion"

    @classmethod
    def build_loss(cls, lc: UPFusionLossConfig) -> nn.Module:
        return UPFusionLoss(lc.variant, intensity=lc.intensity, gradient=lc.gradient, ssim=lc.ssim, seg=lc.seg)


def _bare(model: nn.Module) -> nn.Module:
    """The model inside a data-parallel wrapper (its buffers and flags), or the model itself."""
    return getattr(model, "module", model)


def fallback_text_tokens(model: nn.Module) -> torch.Tensor:
    """The model's stored fallback text tokens (L, d): the text of samples that have a mask but
    no cached text (generated scenes' object masks)."""
    tokens = getattr(_bare(model), "fallback_text", None)
    if not isinstance(tokens, torch.Tensor):
        raise ConfigError(f"{type(_bare(model)).__name__} stores no fallback text tokens (fallback_text)")
    return tokens.reshape(tokens.shape[-2:])


class GuidedPath(nn.Module):
    """A guided model run with per-sample guidance, as this module's ``forward``.

    Each sample says where its guidance came from (``guided``, see
    :mod:`ivf_training.datasets.guidance`): cached SIG output (mask + text tokens), generated
    scenes' object masks (mask + the model's fallback text), or none (``guidance=None``, the
    model's fallback). A batch mixing guided and unguided samples runs as two passes of the
    model — guided ones with a :class:`~ivf_perception.guidance.Guidance`, the others without —
    put back in batch order. Both passes happen inside this one ``forward``, so a data-parallel
    wrapper of this module sees one forward per backward (two calls through the wrapper fail:
    DDP marks each parameter ready once per forward). Holding the model as a child shares its
    parameters.

    Shape:
        rgb (B, 3, H, W), thermal (B, 1, H, W), mask (B, 1, H, W), guided (B,) int64,
        text_tokens (B, L, d) or None → the model's output for the batch
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _guidance(self, mask: torch.Tensor, guided: torch.Tensor, text_tokens: torch.Tensor | None) -> Guidance:
        fallback = fallback_text_tokens(self.model).to(mask.device, torch.float32)
        text = fallback.expand(mask.shape[0], -1, -1)
        if text_tokens is not None:
            from_cache = (guided == GUIDANCE_CACHE).view(-1, 1, 1)
            if bool(from_cache.any()):
                text = torch.where(from_cache, text_tokens.float(), text)
        return Guidance(mask=mask.float(), text_tokens=text.contiguous())

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor, mask: torch.Tensor | None = None,
                guided: torch.Tensor | None = None, text_tokens: torch.Tensor | None = None) -> FusionSegOutput:
        if mask is None or guided is None or not bool((guided != GUIDANCE_NONE).any()):
            return self.model(rgb, thermal)
        if bool((guided != GUIDANCE_NONE).all()):
            return self.model(rgb, thermal, guidance=self._guidance(mask, guided, text_tokens))
        sel = guided != GUIDANCE_NONE
        text = None if text_tokens is None else text_tokens[sel]
        out_g = self.model(rgb[sel], thermal[sel], guidance=self._guidance(mask[sel], guided[sel], text))
        out_u = self.model(rgb[~sel], thermal[~sel])
        order = torch.cat([sel.nonzero()[:, 0], (~sel).nonzero()[:, 0]]).argsort()
        logits = None if out_g.logits is None else torch.cat([out_g.logits, out_u.logits])[order]
        return FusionSegOutput(fused=torch.cat([out_g.fused, out_u.fused])[order], logits=logits)


class GuidedFusionObjective(Objective[TeSGLossConfig]):
    """``loss.kind: tesg``: :class:`~ivf_training.tesg_losses.TeSGLoss` on a model run with
    per-sample guidance through :class:`GuidedPath` (the module the trainer wraps for data
    parallelism).

    Guidance dropout (our extension): with probability ``guidance_dropout`` a whole training batch
    runs with the fallback, drawn from the global torch RNG (checkpointed, so a resumed run draws
    the same). Validation never drops. Under torchrun, runs with fallback samples or dropout leave
    the mask-split blocks unused in some steps: set ``ddp_find_unused_parameters: true``.

    Args:
        guidance_dropout: probability of a fallback batch while training.
    """

    kind = "tesg"

    def __init__(self, guidance_dropout: float = 0.0) -> None:
        self.guidance_dropout = guidance_dropout

    @classmethod
    def from_config(cls, lc: TeSGLossConfig, num_classes: int) -> GuidedFusionObjective:
        return cls(lc.guidance_dropout)

    @classmethod
    def build_loss(cls, lc: TeSGLossConfig) -> nn.Module:
        return TeSGLoss(intensity=lc.intensity, ssim=lc.ssim, color=lc.color, gradient=lc.gradient, seg=lc.seg,
                        ssim_window=lc.ssim_window)

    def prepare(self, model: nn.Module) -> None:
        if not getattr(model, "accepts_guidance", False):
            raise ConfigError(f"loss.kind 'tesg' trains a guided model (tesg, test_tesg); "
                              f"{getattr(model, 'variant', type(model).__name__)} takes no guidance")

    def training_module(self, model: nn.Module) -> nn.Module:
        return GuidedPath(model)

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast, valid: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, guided: torch.Tensor | None = None,
                   text_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        """``model``: the (possibly wrapped) :class:`GuidedPath`. ``valid`` is not used: TeSG's
        reconstructed loss (Text-IF's terms) takes no padding mask."""
        drop = self.guidance_dropout > 0 and float(torch.rand(())) < self.guidance_dropout
        with autocast():
            output = model(rgb, thermal) if drop else model(rgb, thermal, mask, guided, text_tokens)
        return loss_fn(output, rgb, thermal, labels)

    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int, index: int,
                        mask: torch.Tensor | None = None, guided: torch.Tensor | None = None,
                        text_tokens: torch.Tensor | None = None) -> tuple[FusionSegOutput | None, Terms]:
        h, w = rgb.shape[-2:]
        # padding is background, as the engine pads guidance (Guidance.padded): no object there
        padded_mask = None if mask is None else F.pad(mask, (0, (-w) % multiple, 0, (-h) % multiple))
        with autocast():
            out = GuidedPath(model)(pad_to_multiple(rgb, multiple), pad_to_multiple(thermal, multiple), padded_mask,
                                    guided, text_tokens)
        out = FusionSegOutput(fused=out.fused[..., :h, :w].float(),
                              logits=None if out.logits is None else out.logits[..., :h, :w].float())
        _, terms = loss_fn(out, rgb, thermal, labels)
        return out, terms


def _train_only_stage(model: nn.Module, stage: str, kind: str) -> None:
    """Freeze every top-level module of ``model`` that ``STAGE_MODULES[stage]`` does not list.

    Freezing (rather than merely not using) keeps those parameters out of the optimiser, so a
    stage provably changes only its own modules, and data-parallel training sees no parameter
    that requires a gradient but never gets one.
    """
    stages = getattr(model, "STAGE_MODULES", None)
    if not isinstance(stages, Mapping) or stage not in stages:
        raise ConfigError(
            f"loss.kind '{kind}' trains the '{stage}' stage of a staged model (mafs, test_mafs), but "
            f"{getattr(model, 'variant', type(model).__name__)} declares no STAGE_MODULES['{stage}']; "
            "use loss.kind s4fusion or cmfs for single-stage models"
        )
    trained = set(stages[stage])
    frozen = [name for name, _ in model.named_children() if name not in trained]
    for name in frozen:
        getattr(model, name).requires_grad_(False)
    _log.info("%s: training %s; frozen: %s", kind, ", ".join(stages[stage]), ", ".join(frozen) or "nothing")


class ReconstructionPath(nn.Module):
    """A staged model's ``reconstruct(rgb, thermal)`` as this module's ``forward``.

    A data-parallel wrapper hooks only ``forward``: calling ``reconstruct`` on the wrapped model
    directly would skip its gradient synchronisation and let the ranks drift apart silently.
    Holding the model as a child shares its parameters, so no weights are copied.

    Shape:
        rgb (B, 3, H, W), thermal (B, 1, H, W) → (rgb (B, 3, H, W), thermal (B, 1, H, W))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.reconstruct(rgb, thermal)


class MaskedReconstructionObjective(Objective[MAFSStage1LossConfig]):
    """MAFS stage I: hide patches of both images, reconstruct them, loss on the hidden pixels.

    Each step draws, per sample and per modality, a mask of whole ``patch``×``patch`` squares at
    a ratio drawn from ``ratio_range`` (:func:`~ivf_training.mafs_losses.random_patch_mask`);
    the hidden pixels are set to 0 (the masked-autoencoder input), ``model.reconstruct`` predicts
    both complete images and ``loss_fn`` (:class:`~ivf_training.mafs_losses.MAFSStage1Loss`)
    scores the hidden pixels only. Only ``STAGE_MODULES["reconstruction"]`` is trained, through
    :class:`ReconstructionPath` (the module the trainer wraps for data parallelism).

    Training masks come from the global torch RNG (saved in checkpoints, so a resumed run draws
    the same masks); validation masks from a generator seeded with the image's index, so every
    validation scores the same masked inputs and its loss is comparable across steps.

    Args:
        patch: side of a hidden square (MAFS: 32).
        ratio_range: range of the hidden fraction of patches.
        val_seed: base seed of the validation masks.
    """

    kind = "mafs_stage1"
    scores_outputs = False
    export_refusal = ("it is a MAFS stage-I (masked reconstruction) run: its fusion and segmentation heads are "
                      "untrained. Start stage II from it (model.init_from) and export that run.")
    STAGE = "reconstruction"

    def __init__(self, patch: int = 32, ratio_range: tuple[float, float] = (0.25, 0.75), val_seed: int = 0) -> None:
        self.patch = patch
        self.ratio_range = ratio_range
        self.val_seed = val_seed

    @classmethod
    def from_config(cls, lc: MAFSStage1LossConfig, num_classes: int) -> MaskedReconstructionObjective:
        return cls(lc.mask_patch, lc.mask_ratio)

    @classmethod
    def build_loss(cls, lc: MAFSStage1LossConfig) -> nn.Module:
        return MAFSStage1Loss(alpha_intensity=lc.rec_intensity, alpha_gradient=lc.rec_gradient)

    def prepare(self, model: nn.Module) -> None:
        _train_only_stage(model, self.STAGE, self.kind)
        if not callable(getattr(model, "reconstruct", None)):
            raise ConfigError(f"loss.kind 'mafs_stage1' needs a model with reconstruct(rgb, thermal); "
                              f"{type(model).__name__} has none")

    def training_module(self, model: nn.Module) -> nn.Module:
        return ReconstructionPath(model)

    def _masks(self, rgb: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = rgb.shape
        masks = [random_patch_mask(b, h, w, self.patch, self.ratio_range, generator=generator).to(rgb.device)
                 for _ in range(2)]
        return masks[0], masks[1]

    def _loss(self, reconstruct: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
              loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor, autocast: Autocast,
              generator: torch.Generator | None, multiple: int) -> Mapping[str, torch.Tensor]:
        mask_rgb, mask_thermal = self._masks(rgb, generator)
        h, w = rgb.shape[-2:]
        masked_rgb = pad_to_multiple(rgb.masked_fill(mask_rgb, 0.0), multiple)
        masked_thermal = pad_to_multiple(thermal.masked_fill(mask_thermal, 0.0), multiple)
        with autocast():
            rec_rgb, rec_thermal = reconstruct(masked_rgb, masked_thermal)
        rec_rgb, rec_thermal = rec_rgb[..., :h, :w], rec_thermal[..., :h, :w]
        # stage I has no fused image: ``fused`` carries the visible reconstruction only to fill the
        # container the loss reads its ``aux`` keys from
        output = FusionSegOutput(fused=rec_rgb, logits=None, aux={"recon_rgb": rec_rgb, "recon_thermal": rec_thermal})
        return loss_fn(output, rgb, thermal, mask_rgb, mask_thermal)

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        terms = self._loss(model, loss_fn, rgb, thermal, autocast, None, 1)  # model: a ReconstructionPath
        return terms["total"], _detached(terms)

    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int,
                        index: int) -> tuple[FusionSegOutput | None, Terms]:
        generator = torch.Generator().manual_seed(self.val_seed + index)
        return None, _detached(self._loss(model.reconstruct, loss_fn, rgb, thermal, autocast, generator, multiple))


def load_teacher(path: str | Path, num_classes: int) -> nn.Module:
    """A frozen segmentation model built by the registry from engine weights (variant, preset
    and constructor arguments from the sidecar), in eval mode on the CPU.

    Raises:
        ConfigError: the file is missing or unusable, the model does not segment, or its class
            count differs from the student's (distillation compares class distributions).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"loss.teacher_weights: {path} does not exist; give engine weights (.safetensors with its .json "
            "sidecar) of a trained segmentation model, e.g. from `ivf-train export RUN_DIR --out FILE.safetensors`"
        )
    try:
        teacher, _ = build_model_from_weights(path)
    except (IvfPerceptionError, ValueError) as exc:  # weights, registry and model-constructor errors
        raise ConfigError(f"loss.teacher_weights: {path} cannot be used as a teacher: {exc}") from exc
    teacher_classes = int(getattr(teacher, "num_classes", 0))
    if teacher_classes != num_classes:
        raise ConfigError(
            f"loss.teacher_weights: {path} segments {teacher_classes} classes but model.num_classes is "
            f"{num_classes}; distillation needs a teacher trained on the same class table"
        )
    teacher.eval().requires_grad_(False)
    return teacher


class DistilledFusionSegObjective(Objective[MAFSStage2LossConfig]):
    """MAFS stage II: fusion + segmentation, optionally distilled from a frozen teacher.

    The model fuses and segments the batch; the teacher, when given, segments the *fused* image
    (detached: distillation must not push the fusion towards what pleases the teacher). Every
    registry model takes a visible/thermal pair: a teacher trained on fused images
    (``loss.kind: fused_seg_teacher``) receives the second input it was trained with (its
    sidecar's ``thermal_input``, :mod:`ivf_training.teacher`), any other model the thermal image.
    ``loss_fn`` is :class:`~ivf_training.mafs_losses.MAFSStage2Loss`; without a teacher its KD
    term is absent from the logs. Only ``STAGE_MODULES["fusion_seg"]`` is trained (the stage I
    reconstruction decoder stays frozen). The loss's DWA history is part of the checkpoint, and
    with ``dwa_period: epoch`` a DWA period closes at each epoch's end.

    Args:
        teacher: a frozen segmentation model (:func:`load_teacher`) or None.
        teacher_input: the teacher's second input, see :func:`~ivf_training.teacher.teacher_inputs`.
    """

    kind = "mafs_stage2"
    STAGE = "fusion_seg"

    def __init__(self, teacher: nn.Module | None = None, teacher_input: str = "thermal") -> None:
        self.teacher = teacher
        self.teacher_input = teacher_input

    @classmethod
    def from_config(cls, lc: MAFSStage2LossConfig, num_classes: int) -> DistilledFusionSegObjective:
        if not lc.teacher_weights:
            return cls(None)
        teacher = load_teacher(lc.teacher_weights, num_classes)  # checks the file first
        return cls(teacher, teacher_input_of(read_sidecar(lc.teacher_weights)))

    @classmethod
    def build_loss(cls, lc: MAFSStage2LossConfig) -> nn.Module:
        return MAFSStage2Loss(fusion_intensity=lc.intensity, fusion_gradient=lc.gradient, seg_ce=lc.seg,
                              seg_aux=lc.seg_aux, binary=lc.binary, boundary=lc.boundary, kd=lc.kd,
                              kd_temperature=lc.kd_temperature, ohem_thresh=lc.ohem_thresh,
                              ohem_min_kept=lc.ohem_min_kept, boundary_width=lc.boundary_width,
                              alpha=lc.fair_alpha, dwa_temperature=lc.dwa_temperature, dwa_period=lc.dwa_period,
                              gradient_form=lc.gradient_form)

    def prepare(self, model: nn.Module) -> None:
        _train_only_stage(model, self.STAGE, self.kind)
        if int(getattr(model, "num_classes", 0)) == 0:
            raise ConfigError("loss.kind 'mafs_stage2' trains segmentation; set model.num_classes > 0")

    def to(self, device: torch.device) -> DistilledFusionSegObjective:
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def _teacher_logits(self, fused: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        h, w = fused.shape[-2:]
        multiple = int(getattr(self.teacher, "input_multiple", 1))
        inputs = teacher_inputs(fused.detach(), thermal, self.teacher_input)
        with torch.no_grad():
            out = self.teacher(*(pad_to_multiple(x, multiple) for x in inputs))
        return out.logits[..., :h, :w].float()

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        with autocast():
            output = model(rgb, thermal)
            teacher_logits = self._teacher_logits(output.fused, thermal)
        terms = loss_fn(output, rgb, thermal, labels, teacher_logits)
        return terms["total"], _detached(terms)

    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int,
                        index: int) -> tuple[FusionSegOutput | None, Terms]:
        out = forward_full_size(model, rgb, thermal, autocast, multiple)
        with autocast():
            teacher_logits = self._teacher_logits(out.fused, thermal)
        return out, _detached(loss_fn(out, rgb, thermal, labels, teacher_logits))

    def end_epoch(self, loss_fn: nn.Module) -> None:
        loss_fn.end_epoch()

    def state_dict(self, loss_fn: nn.Module) -> dict[str, Any]:
        return {"dwa": dict(loss_fn.dwa.state_dict())}

    def load_state_dict(self, loss_fn: nn.Module, state: Mapping[str, Any]) -> None:
        if "dwa" in state:
            loss_fn.dwa.load_state_dict(state["dwa"])


def load_fusion_source(path: str | Path) -> nn.Module:
    """The frozen fusion model of ``loss.fusion_weights`` (engine weights), in eval mode on the CPU.

    Raises:
        ConfigError: the file is missing or unusable.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"loss.fusion_weights: {path} does not exist; give engine weights (.safetensors with its .json "
            "sidecar) of a trained fusion model, e.g. from `ivf-train export RUN_DIR --out FILE.safetensors`"
        )
    try:
        model, _ = build_model_from_weights(path)
    except (IvfPerceptionError, ValueError) as exc:
        raise ConfigError(f"loss.fusion_weights: {path} cannot be used as the fusion model: {exc}") from exc
    return model.eval().requires_grad_(False)


class FusedInputSegObjective(Objective[FusedSegTeacherLossConfig]):
    """``loss.kind: fused_seg_teacher``: train a segmentation network on fused images (the MAFS
    stage II teacher, :mod:`ivf_training.teacher`).

    Each batch is fused by the frozen ``fusion`` model (no gradient); the trained model segments
    the fused image (its second input per ``thermal_input``) with cross-entropy. Validation
    reports the trained model's mIoU and, as the fused image, the fusion model's output, which is
    what the network saw.

    Args:
        fusion: the frozen fusion model (:func:`load_fusion_source`).
        thermal_input: see :func:`~ivf_training.teacher.teacher_inputs`.
    """

    kind = "fused_seg_teacher"

    def __init__(self, fusion: nn.Module, thermal_input: str = "fused") -> None:
        self.fusion = fusion
        self.thermal_input = thermal_input

    @classmethod
    def from_config(cls, lc: FusedSegTeacherLossConfig, num_classes: int) -> FusedInputSegObjective:
        if not lc.fusion_weights:
            raise ConfigError("loss.kind fused_seg_teacher needs loss.fusion_weights "
                              "(engine weights of a fusion model)")
        return cls(load_fusion_source(lc.fusion_weights), lc.thermal_input)

    @classmethod
    def build_loss(cls, lc: FusedSegTeacherLossConfig) -> nn.Module:
        return SegmentationOnlyLoss(lc.seg)

    def prepare(self, model: nn.Module) -> None:
        if int(getattr(model, "num_classes", 0)) == 0:
            raise ConfigError("loss.kind 'fused_seg_teacher' trains segmentation; set model.num_classes > 0")

    def to(self, device: torch.device) -> FusedInputSegObjective:
        self.fusion.to(device)
        return self

    def _fused(self, rgb: torch.Tensor, thermal: torch.Tensor, autocast: Autocast) -> torch.Tensor:
        with torch.no_grad():
            return forward_full_size(self.fusion, rgb, thermal, autocast).fused.clamp(0.0, 1.0)

    def train_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                   labels: torch.Tensor, autocast: Autocast,
                   valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Terms]:
        fused = self._fused(rgb, thermal, autocast)
        with autocast():
            output = model(*teacher_inputs(fused, thermal, self.thermal_input))
        return loss_fn(output, labels)

    def validation_step(self, model: nn.Module, loss_fn: nn.Module, rgb: torch.Tensor, thermal: torch.Tensor,
                        labels: torch.Tensor | None, autocast: Autocast, multiple: int,
                        index: int) -> tuple[FusionSegOutput | None, Terms]:
        fused = self._fused(rgb, thermal, autocast)
        out = forward_full_size(model, *teacher_inputs(fused, thermal, self.thermal_input), autocast, multiple)
        _, terms = loss_fn(out, labels)
        return FusionSegOutput(fused=fused, logits=out.logits, aux=out.aux), terms


OBJECTIVES: dict[str, type[Objective[Any]]] = {
    cls.kind: cls
    for cls in (S4FusionObjective, CMFSObjective, UPFusionObjective, GuidedFusionObjective,
                MaskedReconstructionObjective, DistilledFusionSegObjective, FusedInputSegObjective)
}
"""The objective class of each ``loss.kind`` (the kinds of :data:`ivf_training.config.LossConfig`)."""


def objective_class(kind: str) -> type[Objective[Any]]:
    """The objective class of ``loss.kind`` ``kind``."""
    try:
        return OBJECTIVES[kind]
    except KeyError:
        raise ConfigError(f"loss.kind must be one of {', '.join(OBJECTIVES)}; got {kind!r}") from None


def build_objective(lc: LossConfig, num_classes: int) -> tuple[Objective[Any], nn.Module]:
    """The objective of ``lc.kind`` and the loss module it trains with; a configured teacher is
    loaded here (failing before any run directory is written)."""
    cls = objective_class(lc.kind)
    loss_fn = cls.build_loss(lc)  # first, as before the objectives built losses: the same RNG draws
    return cls.from_config(lc, num_classes), loss_fn
