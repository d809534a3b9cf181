"""The whole run's configuration (:class:`TrainConfig`) and its cross-field checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ivf_training.config.losses import LossConfig, S4FusionLossConfig
from ivf_training.config.schema import ConfigError
from ivf_training.config.sections import DataConfig, ModelConfig, OptimConfig

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a training run needs; written resolved to ``RUN_DIR/config.yaml``.

    Attributes:
        model, data, optim: see their classes (:mod:`ivf_training.config.sections`).
        loss: the settings of one ``loss.kind`` (:mod:`ivf_training.config.losses`).
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
        val_at_start: when the run starts from weights (``model.init_from``), validate them at
            step 0, before any training, so the run summary shows whether the fine-tune helped.
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
    loss: LossConfig = field(default_factory=S4FusionLossConfig)
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    crop: int = 128
    crop_width: int | None = None
    seed: int = 0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    device: str = "auto"
    val_every: int = 500
    val_at_start: bool = True
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
            raise ConfigError(f"optim.gamma_decay (learning-rate factor per epoch) must be in (0, 1], "
                              f"got {o.gamma_decay}")
        self.loss.check_run(best_metric=self.best_metric, num_classes=self.model.num_classes)
        if self.model.reinit and not self.model.init_from:
            raise ConfigError(f"model.reinit {self.model.reinit} needs model.init_from: without it the "
                              "whole model is freshly initialised anyway")
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


def _ranges_overlap(a0: int, an: int, b0: int, bn: int) -> bool:
    return a0 < b0 + bn and b0 < a0 + an
