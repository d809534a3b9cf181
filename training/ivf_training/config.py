"""Typed training configuration: dataclasses, YAML loading, ``key=value`` overrides, validation.

Why typed dataclasses instead of a free dict passed around: every key is declared once with its
type and default, a typo fails at start-up (naming the key and listing the valid ones) instead of
silently being ignored hours into a run, and the resolved configuration written next to the
checkpoints is exactly what ran. The configuration is parsed once at the entry point and unpacked
into plain constructor arguments (STYLE: "a config object passed everywhere" is an anti-pattern).

YAML quirk handled here: PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*; float
fields therefore accept strings that Python's ``float()`` parses.

Relative data paths are resolved against the current working directory when the configuration
is loaded (run ``ivf-train`` from the project root) and stored absolute in the run directory, so
``ivf-train resume`` works from anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "ConfigError",
    "ModelConfig",
    "GeneratedDataConfig",
    "DataConfig",
    "OptimConfig",
    "LossConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
    "apply_overrides",
    "absolutize_paths",
    "dump_config",
]


class ConfigError(IvfPerceptionError, ValueError):
    """The configuration file or an override is invalid (unknown key, wrong type or value)."""


@dataclass
class ModelConfig:
    """Which network to build (``build_model(variant, preset=..., num_classes=..., **overrides)``).

    Attributes:
        variant: registry name, e.g. ``"s4fusion"``.
        preset: size preset (``paper``, ``small``, ``tiny``).
        num_classes: segmentation classes; 0 trains a fusion-only model.
        overrides: extra constructor arguments of the variant (e.g. ``{"drop_path": 0.0}``).
        init_from: weights to start from instead of a random initialisation: engine weights
            (``.safetensors`` with sidecar) or a run's checkpoint ``.safetensors``. Used for
            fine-tuning stages and stage hand-overs; must fit the model exactly.
        text_features: for text-guided models (CMFS): a CLIP text feature file of the class
            prompts (``ivf-perception clip-text-features`` writes one).
        clip_weights: for text-guided models: an open_clip ViT-B/32 checkpoint file to compute
            the text features from (cached in the run directory), or ``random`` for a randomly
            initialised text tower (tests and CPU learning checks: no real CLIP guidance).
    """

    variant: str = "s4fusion"
    preset: str = "tiny"
    num_classes: int = 9
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    text_features: str | None = None
    clip_weights: str | None = None


@dataclass
class GeneratedDataConfig:
    """Generated scenes (``ivf_perception.io.synthetic``): the only labelled data available here.

    Attributes:
        train_count: scenes used for training (indices ``train_start`` ..).
        val_count: scenes used for validation (indices ``val_start`` ..).
        train_start: first scene index for training.
        val_start: first scene index for validation; far from the training range so the two
            sets never overlap.
        scene: fields of ``SceneConfig`` (size, object counts, night ratio, ...).
    """

    train_count: int = 0
    val_count: int = 0
    train_start: int = 0
    val_start: int = 1_000_000
    scene: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Training and validation data.

    Attributes:
        generated: generated scenes (labelled).
        kind: the layout of ``train_folders`` and ``val_folders`` (see training/DATASETS.md):
            ``folder`` (``vi/``, ``ir/``, optional ``labels/``), ``extract`` (written by
            ``ivf-perception extract``), ``mfnet``, ``msrs``, ``pst900`` or ``fmb``.
        train_folders: dataset roots of layout ``kind`` to train on.
        train_split: split of ``train_folders`` (benchmarks: a split name, default ``train``;
            ``folder``/``extract``: an optional subfolder).
        train_real: unlabelled pair folders with ``vi/`` and ``ir/`` (e.g. LLVIP train).
        real_repeat: how often each folder/real set appears in the training mix; small real sets
            next to thousands of generated scenes would otherwise hardly be seen.
        real_short_side: resize real images so their shorter side has this many pixels before
            augmentation (LLVIP is 1280×1024; crops of 128 px would show only texture); ``None``
            keeps the original size.
        val_folders: dataset roots of layout ``kind`` for validation (labelled or not).
        val_split: split of ``val_folders``; ``None`` → ``val`` for MFNet, ``test`` for MSRS,
            PST900 and FMB (they ship no validation split), the root itself for folder kinds.
        loader_options: extra arguments of the ``kind``'s loader, e.g. ``{thermal: thermal_raw}``
            for PST900's 16-bit thermal (unknown ones are errors when the data is built).
        val_real: unlabelled pair folders for fusion-metric validation (never RoadScene/TNO,
            which are held out for reporting).
        val_max_pairs: at most this many pairs per unlabelled validation folder (fusion metrics
            on full-size images are slow on a CPU); ``None`` uses all.
        class_names: one name per class; empty → the MFNet names when ``num_classes`` is 9,
            otherwise ``class_0`` ...
        palette: one 0xRRGGBB colour per class; empty → MFNet palette or a generated one.
        scale_range: random scale factor range of the joint augmentation.
        hflip: random horizontal flip.
        rot90: random rotation by a multiple of 90° (MAFS); needs a square crop (``crop_width``
            unset or equal to ``crop``), since a quarter turn swaps height and width.
    """

    generated: GeneratedDataConfig = field(default_factory=GeneratedDataConfig)
    kind: Literal["folder", "extract", "mfnet", "msrs", "pst900", "fmb"] = "folder"
    train_folders: list[str] = field(default_factory=list)
    train_split: str | None = None
    train_real: list[str] = field(default_factory=list)
    real_repeat: int = 1
    real_short_side: int | None = None
    val_folders: list[str] = field(default_factory=list)
    val_split: str | None = None
    loader_options: dict[str, Any] = field(default_factory=dict)
    val_real: list[str] = field(default_factory=list)
    val_max_pairs: int | None = None
    class_names: list[str] = field(default_factory=list)
    palette: list[int] = field(default_factory=list)
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    rot90: bool = False

    def __post_init__(self) -> None:
        """Single-field checks: split names are names (``train``, ``test_night``), never paths such as
        ``../x``; loader options do not shadow what the trainer passes to ``build_dataset`` itself."""
        for name in ("train_split", "val_split"):
            split = getattr(self, name)
            if split is not None and (not split.strip() or split in (".", "..") or any(c in split for c in "/\\")):
                raise ConfigError(
                    f"data.{name} must be a split name such as 'train' or 'test' (no path separators), got {split!r}"
                )
        reserved = sorted(set(self.loader_options) & {"root", "split", "num_classes", "short_side", "max_pairs"})
        if reserved:
            raise ConfigError(
                f"data.loader_options cannot set {', '.join(reserved)}: they come from data.train_folders/val_folders, "
                "the splits, model.num_classes, data.real_short_side and data.val_max_pairs"
            )


@dataclass
class OptimConfig:
    """AdamW (or SGD) with a linear warm-up followed by a cosine, polynomial or exponential decay.

    S4Fusion trains with warm-up cosine 3e-4 → 1.5e-3 → 6e-4: the learning rate rises linearly
    from ``lr_start`` to ``lr_peak`` during the first ``warmup_fraction`` of the steps, then
    follows half a cosine down to ``lr_end``. CMFS uses ``schedule: poly``: after the warm-up,
    ``lr_end + (lr_peak − lr_end)·(1 − t)^power`` with t the fraction of the decay done. MAFS
    uses SGD (momentum 0.9, lr 1e-3) with ``schedule: exp``: after the warm-up,
    ``lr_peak·gamma_decay^e`` with e the (fractional) number of epochs since the warm-up ended;
    ``lr_end`` plays no part in it.

    Attributes:
        lr_start: learning rate at step 0.
        lr_peak: learning rate at the end of the warm-up.
        lr_end: learning rate at the last step.
        warmup_fraction: fraction of all steps spent warming up, in [0, 1).
        weight_decay: AdamW decoupled weight decay (not applied to norms, biases and parameters
            flagged ``_no_weight_decay`` such as Mamba's ``A_log`` and ``D``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip: maximum global gradient norm; ``None`` disables clipping.
        schedule: ``warmup_cosine``, ``poly`` or ``exp``.
        power: exponent of the ``poly`` decay.
        name: ``adamw`` or ``sgd`` (momentum SGD, whose ``weight_decay`` is the classic L2
            penalty; betas and eps are AdamW's only).
        momentum: SGD momentum.
        gamma_decay: learning-rate factor per epoch of the ``exp`` decay, in (0, 1].
    """

    lr_start: float = 3e-4
    lr_peak: float = 1.5e-3
    lr_end: float = 6e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    schedule: Literal["warmup_cosine", "poly", "exp"] = "warmup_cosine"
    power: float = 0.9
    name: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    gamma_decay: float = 0.99


@dataclass
class LossConfig:
    """Weights of the loss terms (see ``ivf_training.losses`` for the definitions and choices).

    Attributes:
        seg: cross-entropy weight (ignore index 255).
        fusion: multiplier of the whole fusion group (intensity + ssim + gradient + color).
        intensity: L1(Y_F, max(Y_vi, IR)).
        ssim: 1 − mean(SSIM(Y_F, Y_vi), SSIM(Y_F, IR)).
        gradient: L1(|∇Y_F|, max(|∇Y_vi|, |∇IR|)) with a normalised Sobel operator.
        color: L1 between the fused and the visible CbCr (our addition: the model outputs RGB).
        perception: weight of the perception-enhanced loss (ResNet-50 entropy); used only when
            ``resnet50_weights`` is set.
        perception_texture: weight of the Sobel texture term that keeps the entropy term in check.
        resnet50_weights: local torchvision ResNet-50 weight file (.safetensors, or a .pth state
            dict loaded with ``weights_only=True``); ``None`` skips the perception loss.
        kind: which objective: ``s4fusion`` (the terms above), ``cmfs``
            (``ivf_training.cmfs_losses``: seg·CE + fusion·(intensity·L_int + color·L_color +
            gradient·L_grad) + moe_balance·L_bal, with the visible image gamma-corrected by
            ``gamma`` and the thermal contrast scaled by ``beta``; ssim and perception unused),
            ``mafs_stage1`` or ``mafs_stage2`` (below).
        gamma: CMFS's visible gamma (0.5 MFNet/PST900, 0.8 FMB).
        beta: CMFS's thermal contrast factor (1.7 MFNet, 1.0 FMB, 1.8 PST900).
        moe_balance: weight of CMFS's mixture-of-experts load-balancing term.

    MAFS (``ivf_training.mafs_losses``) trains in two runs, each its own ``kind``:

    * ``mafs_stage1``: masked reconstruction (``MAFSStage1Loss``):
      ``rec_intensity·L1 + rec_gradient·L1(∇)`` on the hidden pixels of both images, with
      ``mask_patch``-sized squares hidden at a ratio drawn from ``mask_ratio`` per sample and
      modality. Validation reports only ``loss/<term>`` (use ``best_metric: loss/total``,
      ``best_mode: min``).
    * ``mafs_stage2``: fusion + segmentation (``MAFSStage2Loss``): fusion task
      ``intensity·L_int + gradient·L_grad`` (paper: 5 and 8), segmentation task
      ``seg·OHEM + seg_aux·aux + binary·BCE + boundary·L_bd + kd·KD``; both through the α-fair
      utility (``fair_alpha``) and weighted by DWA (``dwa_temperature``, ``dwa_period``);
      ``fusion``, ``ssim``, ``color`` and the perception terms are unused.

    Attributes (MAFS):
        mask_patch: side of a hidden square in pixels (paper: 32).
        mask_ratio: range of the hidden fraction of patches, ``0 <= lo <= hi <= 1``, ``hi > 0``.
        rec_intensity, rec_gradient: α1, α2 of the stage I loss (paper: 5, 5).
        seg_aux: weight of the deep supervision of the transformer-decoder stages.
        binary, boundary: weights of the binary (foreground) and boundary heads.
        kd: weight of the distillation term (used only with ``teacher_weights``).
        kd_temperature: distillation temperature T (paper: 4).
        ohem_thresh: OHEM probability threshold; ``ohem_min_kept``: least pixels kept
            (``None``: 1/16 of the batch's pixels).
        boundary_width: half-width in pixels of the boundary target band.
        fair_alpha: α of the α-fair utility (paper: 0.8).
        dwa_temperature: DWA temperature (paper: 500).
        dwa_period: ``step`` or ``epoch`` (the paper's): what one DWA period is.
        teacher_weights: engine weights (``.safetensors`` + sidecar) of any segmentation model
            the registry builds, with the student's class count; it segments the fused image
            (frozen) for the KD term. ``None``: no distillation.
    """

    seg: float = 1.0
    fusion: float = 1.0
    intensity: float = 1.0
    ssim: float = 1.0
    gradient: float = 15.0
    color: float = 1.0
    perception: float = 0.1
    perception_texture: float = 1.0
    resnet50_weights: str | None = None
    kind: Literal["s4fusion", "cmfs", "mafs_stage1", "mafs_stage2"] = "s4fusion"
    gamma: float = 0.5
    beta: float = 1.7
    moe_balance: float = 0.01
    mask_patch: int = 32
    mask_ratio: tuple[float, float] = (0.25, 0.75)
    rec_intensity: float = 5.0
    rec_gradient: float = 5.0
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


@dataclass
class TrainConfig:
    """Everything a training run needs; written resolved to ``RUN_DIR/config.yaml``.

    Attributes:
        model, data, optim, loss: see their classes.
        max_steps: optimiser steps to train; takes precedence over ``epochs``.
        epochs: passes over the training mix (used when ``max_steps`` is ``None``).
        batch_size: training batch size (crops make images equal-sized): the global batch of one
            optimiser step, split over the ``torchrun`` ranks and then into ``accum_steps``
            micro-batches, so a recipe means the same on one GPU as on eight.
        accum_steps: gradient accumulation: micro-batches per optimiser step (their gradients
            add up to the whole batch's); ``batch_size`` must divide by ranks × accum_steps.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            0.999; ``None``: off). Validation, ``ckpt/best`` and export then use the averaged
            weights; the checkpoints hold both.
        crop: training crop height (and width unless ``crop_width`` is set) in pixels; must be
            divisible by the model's ``input_multiple``.
        crop_width: training crop width when it differs from ``crop`` (e.g. 640 with crop 480).
        seed: seeds model initialisation, data order and augmentation.
        amp: mixed precision on CUDA: ``auto`` (bf16 if supported, else fp16), ``bf16``,
            ``fp16`` or ``off``; always off on the CPU.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        val_every: validate every this many steps (0: only at the end).
        ckpt_every: checkpoint every this many steps (0: only at the end).
        log_every: write a training line to ``log.jsonl`` every this many steps.
        num_workers: DataLoader worker processes.
        out_dir: parent folder of run directories.
        name: run directory name; ``None`` → ``<config stem>-<timestamp>``.
        best_metric: validation metric selecting ``ckpt/best`` (``mIoU``, ``fusion/Qabf``,
            ``loss/total`` ...).
        best_mode: whether a higher (``max``) or lower (``min``) ``best_metric`` is better.
        progress: show a tqdm progress bar.
        tensorboard: write TensorBoard events to ``RUN_DIR/tb`` (when the ``tensorboard``
            package is installed).
        image_every: add an image grid (inputs, fused, labels, prediction) to TensorBoard every
            this many steps (0: never).
        ddp_find_unused_parameters: under ``torchrun``, let DDP look for parameters that got no
            gradient in a step (needed only by models with unused branches; costs a graph walk).
        sync_batchnorm: under ``torchrun`` on GPUs, compute BatchNorm statistics over the global
            batch instead of each rank's share (small per-GPU batches).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    crop: int = 128
    crop_width: int | None = None
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    device: str = "auto"
    val_every: int = 500
    ckpt_every: int = 250
    log_every: int = 10
    num_workers: int = 0
    out_dir: str = "runs"
    name: str | None = None
    best_metric: str = "mIoU"
    best_mode: Literal["max", "min"] = "max"
    progress: bool = True
    accum_steps: int = 1
    ema_decay: float | None = None
    tensorboard: bool = True
    image_every: int = 500
    ddp_find_unused_parameters: bool = False
    sync_batchnorm: bool = False

    def validate(self) -> None:
        """Cross-field checks that single-field typing cannot express."""
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("set either max_steps or epochs (both are empty)")
        for name in ("max_steps", "epochs", "batch_size", "crop", "crop_width", "log_every", "accum_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        for name in ("val_every", "ckpt_every", "num_workers", "seed", "image_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) (e.g. 0.999) or null, got {self.ema_decay}")
        if self.model.num_classes < 0:
            raise ConfigError(f"model.num_classes must be >= 0, got {self.model.num_classes}")
        o = self.optim
        if not 0.0 <= o.warmup_fraction < 1.0:
            raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {o.warmup_fraction}")
        for name in ("lr_start", "lr_peak", "lr_end", "weight_decay", "eps"):
            if getattr(o, name) < 0:
                raise ConfigError(f"optim.{name} must be >= 0, got {getattr(o, name)}")
        if o.lr_peak <= 0:
            raise ConfigError(f"optim.lr_peak must be > 0, got {o.lr_peak}")
        if o.grad_clip is not None and o.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {o.grad_clip}")
        if o.power <= 0:
            raise ConfigError(f"optim.power must be > 0, got {o.power}")
        if not 0.0 <= o.momentum < 1.0:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {o.momentum}")
        if not 0.0 < o.gamma_decay <= 1.0:
            raise ConfigError(f"optim.gamma_decay (learning-rate factor per epoch) must be in (0, 1], got {o.gamma_decay}")
        lc = self.loss
        if lc.kind == "cmfs" and (lc.gamma <= 0 or lc.beta < 0):
            raise ConfigError(f"loss.gamma must be > 0 and loss.beta >= 0, got {lc.gamma} and {lc.beta}")
        if lc.kind != "s4fusion" and lc.resnet50_weights:
            raise ConfigError(
                f"loss.resnet50_weights belongs to the s4fusion objective; the {lc.kind} objective has no perception term"
            )
        if lc.teacher_weights and lc.kind != "mafs_stage2":
            raise ConfigError(f"loss.teacher_weights is used by loss.kind mafs_stage2 only (got loss.kind {lc.kind})")
        if lc.kind in ("mafs_stage1", "mafs_stage2"):
            _validate_mafs_loss(lc)
        if lc.kind == "mafs_stage1" and not self.best_metric.startswith("loss/"):
            raise ConfigError(
                f"best_metric '{self.best_metric}': MAFS stage I validation reports only the reconstruction loss; "
                "set best_metric: loss/total and best_mode: min"
            )
        if lc.kind == "mafs_stage2" and self.model.num_classes == 0:
            raise ConfigError("loss.kind mafs_stage2 trains segmentation: model.num_classes must be > 0")
        if self.model.text_features and self.model.clip_weights:
            raise ConfigError("set model.text_features or model.clip_weights, not both")
        d = self.data
        lo, hi = d.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range must satisfy 0 < min <= max, got {list(d.scale_range)}")
        if d.rot90 and self.crop_width not in (None, self.crop):
            raise ConfigError(
                f"data.rot90 needs a square crop: a quarter turn of a {self.crop}x{self.crop_width} crop is "
                f"{self.crop_width}x{self.crop}; unset crop_width or set data.rot90: false"
            )
        if d.real_repeat < 1:
            raise ConfigError(f"data.real_repeat must be >= 1, got {d.real_repeat}")
        g = d.generated
        for name in ("train_count", "val_count", "train_start", "val_start"):
            if getattr(g, name) < 0:
                raise ConfigError(f"data.generated.{name} must be >= 0, got {getattr(g, name)}")
        if g.train_count and g.val_count and _ranges_overlap(
            g.train_start, g.train_count, g.val_start, g.val_count
        ):
            raise ConfigError(
                f"generated training scenes [{g.train_start}, {g.train_start + g.train_count}) overlap "
                f"validation scenes [{g.val_start}, {g.val_start + g.val_count}); move data.generated.val_start"
            )
        if not (g.train_count or d.train_folders or d.train_real):
            raise ConfigError(
                "no training data: set data.generated.train_count, data.train_folders or data.train_real"
            )
        n = self.model.num_classes
        if d.class_names and len(d.class_names) != n:
            raise ConfigError(f"data.class_names has {len(d.class_names)} names but model.num_classes is {n}")
        if d.palette and len(d.palette) != n:
            raise ConfigError(f"data.palette has {len(d.palette)} colours but model.num_classes is {n}")
        labelled_val = g.val_count > 0 or bool(d.val_folders)
        if self.best_metric == "mIoU" and not (labelled_val and n > 0):
            raise ConfigError(
                "best_metric 'mIoU' needs a segmenting model and labelled validation data "
                "(data.generated.val_count > 0 or data.val_folders); for fusion-only training "
                "set best_metric to a fusion metric such as fusion/Qabf"
            )


# --------------------------------------------------------------------------------------------
# dict <-> dataclass


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data (dicts, lists, scalars) of a config dataclass (tuples → lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data; unknown keys are errors."""
    cfg = _build(TrainConfig, data, "")
    cfg.validate()
    return cfg


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the configuration"
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(_unknown_key_message(f"{prefix}{key}", prefix, names))
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _unknown_key_message(full_key: str, prefix: str, names: Sequence[str]) -> str:
    section = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f"unknown key '{full_key}'; valid keys in {section}: {', '.join(names)}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {'; '.join(errors)}")
    if value is None:
        raise ConfigError(f"{key} must not be null (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): copy.deepcopy(v) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module, not user input


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _validate_mafs_loss(lc: LossConfig) -> None:
    """Ranges of the MAFS loss settings (the loss classes would fail only at the first step)."""
    if lc.mask_patch < 1:
        raise ConfigError(f"loss.mask_patch must be >= 1 pixel, got {lc.mask_patch}")
    lo, hi = lc.mask_ratio
    if not (0.0 <= lo <= hi <= 1.0 and hi > 0.0):
        raise ConfigError(f"loss.mask_ratio must satisfy 0 <= min <= max <= 1 and max > 0, got {list(lc.mask_ratio)}")
    for name in ("seg", "intensity", "gradient", "rec_intensity", "rec_gradient", "seg_aux", "binary", "boundary",
                 "kd", "fair_alpha"):
        if getattr(lc, name) < 0:
            raise ConfigError(f"loss.{name} must be >= 0, got {getattr(lc, name)}")
    for name in ("kd_temperature", "dwa_temperature"):
        if getattr(lc, name) <= 0:
            raise ConfigError(f"loss.{name} must be > 0, got {getattr(lc, name)}")
    if not 0.0 < lc.ohem_thresh <= 1.0:
        raise ConfigError(f"loss.ohem_thresh is a probability in (0, 1], got {lc.ohem_thresh}")
    if lc.ohem_min_kept is not None and lc.ohem_min_kept < 0:
        raise ConfigError(f"loss.ohem_min_kept must be >= 0 or null, got {lc.ohem_min_kept}")
    if lc.boundary_width < 1:
        raise ConfigError(f"loss.boundary_width must be >= 1 pixel, got {lc.boundary_width}")


def _ranges_overlap(a0: int, an: int, b0: int, bn: int) -> bool:
    return a0 < b0 + bn and b0 < a0 + an


# --------------------------------------------------------------------------------------------
# overrides


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.sub=value`` strings; values are YAML scalars/lists (``[0.5, 2.0]``, ``null``)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. optim.lr_peak=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied; unknown keys are errors.

    Keys are checked against the dataclass schema, so ``optim.lrr=1`` fails naming ``optim.lrr``
    and listing the valid keys of ``optim``. Below free-form mappings (``model.overrides``,
    ``data.generated.scene``) any key is accepted.
    """
    out = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        node: dict[str, Any] = out
        cls: Any = TrainConfig
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if cls is not None:
                hints = typing.get_type_hints(cls)
                if part not in hints:
                    prefix = "".join(p + "." for p in path[:depth])
                    names = [f.name for f in dataclasses.fields(cls)]
                    raise ConfigError(_unknown_key_message(".".join(path[: depth + 1]), prefix, names))
                tp = hints[part]
                cls = tp if dataclasses.is_dataclass(tp) else None
                if not last and cls is None and typing.get_origin(tp) is not dict:
                    raise ConfigError(f"'{'.'.join(path[: depth + 1])}' is a value, not a section")
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise ConfigError(f"'{'.'.join(path[: depth + 1])}' is not a mapping in the configuration")
                node = child
    return out


# --------------------------------------------------------------------------------------------
# files

_PATH_LIST_FIELDS = ("train_folders", "train_real", "val_folders", "val_real")


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML file (or defaults when ``path`` is None), apply overrides, validate.

    Relative data paths and the loss's weight files are made absolute against the current
    working directory; a ``name`` left empty becomes ``<file stem>-<timestamp>`` in the trainer.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    try:
        cfg = config_from_dict(apply_overrides(data, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return absolutize_paths(cfg)


def absolutize_paths(cfg: TrainConfig) -> TrainConfig:
    """Make data paths, the loss's weight files (ResNet-50, teacher) and ``out_dir`` absolute (against the cwd)."""
    for name in _PATH_LIST_FIELDS:
        setattr(cfg.data, name, [_absolute(p) for p in getattr(cfg.data, name)])
    if cfg.loss.resnet50_weights:
        cfg.loss.resnet50_weights = _absolute(cfg.loss.resnet50_weights)
    if cfg.loss.teacher_weights:
        cfg.loss.teacher_weights = _absolute(cfg.loss.teacher_weights)
    if cfg.model.init_from:
        cfg.model.init_from = _absolute(cfg.model.init_from)
    if cfg.model.text_features:
        cfg.model.text_features = _absolute(cfg.model.text_features)
    if cfg.model.clip_weights and cfg.model.clip_weights != "random":
        cfg.model.clip_weights = _absolute(cfg.model.clip_weights)
    cfg.out_dir = _absolute(cfg.out_dir)
    return cfg


def _absolute(path: str) -> str:
    """Absolute and lexically normalised (``a/../b`` → ``b``), symlinks kept as written."""
    return os.path.abspath(os.path.expanduser(path))


def dump_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved configuration as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
