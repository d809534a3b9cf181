"""The training loop: optimiser, schedule, AMP, validation, logging, checkpoints, export.

Run directory layout (``RUN_DIR = out_dir/name``)::

    config.yaml        the resolved configuration (absolute paths); ``resume`` reads only this
    data.json          what was trained/validated on (kinds, folders, counts)
    log.jsonl          one JSON object per line: {"kind": "train"|"val"|"resume", "step": ...}
    ckpt/last.*        latest checkpoint (see ivf_training.checkpoint), ckpt/prev.* the one before
    ckpt/best.safetensors + best.json   model with the best validation ``best_metric``
    ckpt/stale-*       files set aside when resuming from an older checkpoint (never deleted)
    tb/                TensorBoard events (ivf_training.tb_logging)
    eval/              reports of ``ivf-train eval`` (ivf_training.evaluate)

Under ``torchrun`` every rank runs a Trainer on its slice of each global batch and rank 0 alone
writes the run directory (:mod:`ivf_training.distributed`).

Reproducibility: the seed fixes model initialisation (set before ``build_model``), the data
order (:class:`~ivf_training.datasets.ResumableBatchSampler`) and the augmentation
(:class:`~ivf_training.datasets.AugmentedDataset`); checkpoints hold optimiser, scaler and RNG
states (and the EMA weights), so resuming at step N reproduces an uninterrupted run on the CPU
bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from ivf_perception.engine.weights import WEIGHTS_FORMAT, WeightsInfo, load_weights, save_weights, sidecar_path
from ivf_perception.io.classes import CLASS_TABLES, MFNET_CLASSES
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors
from ivf_perception.models import FusionSegOutput, build_model
from ivf_perception.models.registry import without_pretrained_files
from ivf_perception.models.cmfs.text_features import TextFeaturesError, text_features_for

from ivf_training.augment import JointAugment
from ivf_training.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_model_file,
)
from ivf_training.config import (
    ConfigError,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
)
from ivf_training.datasets import (
    AugmentedDataset,
    RealPairsDataset,
    ResumableBatchSampler,
    build_dataset,
    build_mix,
    default_split,
    describe_dataset,
)
from ivf_training.cmfs_losses import CMFSLoss
from ivf_training.losses import FusionSegLoss, PerceptionLoss
from ivf_training.mafs_losses import MAFSStage1Loss, MAFSStage2Loss
from ivf_training.objectives import Objective, SupervisedObjective, build_objective
from ivf_training.distributed import (
    DistContext,
    ShardedBatchSampler,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    gather_objects,
    grad_sync,
    mean_across_ranks,
    split_batch,
    wrap_model,
)
from ivf_training.ema import ModelEMA
from ivf_training.tb_logging import TensorBoardLogger
from ivf_training.validation import FUSION_VAL_METRICS, SEG_VAL_METRICS, validate_model

__all__ = [
    "FUSION_VAL_METRICS",
    "WarmupCosine",
    "WarmupPoly",
    "WarmupExp",
    "build_loss",
    "build_optimizer",
    "build_schedule",
    "param_groups",
    "seed_everything",
    "resolve_classes",
    "Trainer",
    "build_datasets",
    "start_run",
    "read_run_config",
    "resume_run",
    "RunWeights",
    "load_run_weights",
    "export_engine_weights",
]

_log = logging.getLogger(__name__)

_LOSS_TERMS = ("total", "seg_ce", "fus_intensity", "fus_ssim", "fus_gradient", "fus_color", "per_entropy", "per_texture",
               "moe_balance",
               # MAFS stage I (masked reconstruction) and stage II (fusion + segmentation, DWA weights)
               "rec_rgb", "rec_rgb_intensity", "rec_rgb_gradient", "rec_thermal", "rec_thermal_intensity",
               "rec_thermal_gradient", "fusion", "segmentation", "seg_ohem", "seg_aux", "seg_binary", "seg_boundary",
               "seg_kd", "dwa_fusion", "dwa_segmentation")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


# --------------------------------------------------------------------------------------------
# small pieces


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine to ``end``.

    A pure function of the step, so resuming needs no scheduler state beyond the step count.
    """

    start: float
    peak: float
    end: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        """Learning rate for the optimiser step with index ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - 1 - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end + 0.5 * (self.peak - self.end) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class WarmupPoly:
    """Linear warm-up from ``start`` to ``peak``, then ``end + (peak − end)·(1 − t)^power``.

    The "poly" schedule of semantic segmentation (CMFS: power 0.9 after a warm-up); a pure
    function of the step like :class:`WarmupCosine`.
    """

    start: float
    peak: float
    end: float
    warmup_steps: int
    total_steps: int
    power: float = 0.9

    def __call__(self, step: int) -> float:
        """Learning rate for the optimiser step with index ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - 1 - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end + (self.peak - self.end) * (1.0 - t) ** self.power


@dataclass(frozen=True)
class WarmupExp:
    """Linear warm-up from ``start`` to ``peak``, then ``peak·gamma^e`` with ``e`` the epochs
    (fractional) since the warm-up ended.

    The exponential decay MAFS trains with; continuous in the step (rather than a staircase
    per epoch) so that it stays a pure function of the step like :class:`WarmupCosine`.
    """

    start: float
    peak: float
    warmup_steps: int
    steps_per_epoch: int
    gamma: float

    def __call__(self, step: int) -> float:
        """Learning rate for the optimiser step with index ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        return self.peak * self.gamma ** ((step - self.warmup_steps) / self.steps_per_epoch)


def build_schedule(o: OptimConfig, max_steps: int, steps_per_epoch: int | None = None) -> Callable[[int], float]:
    """The learning-rate schedule named by ``optim.schedule``.

    Args:
        steps_per_epoch: optimiser steps per pass over the training mix; the ``exp`` schedule
            decays per epoch and needs it.
    """
    warmup = int(o.warmup_fraction * max_steps)
    if o.schedule == "poly":
        return WarmupPoly(o.lr_start, o.lr_peak, o.lr_end, warmup, max_steps, o.power)
    if o.schedule == "exp":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ConfigError(f"optim.schedule exp decays per epoch and needs steps_per_epoch >= 1, got {steps_per_epoch}")
        return WarmupExp(o.lr_start, o.lr_peak, warmup, steps_per_epoch, o.gamma_decay)
    return WarmupCosine(o.lr_start, o.lr_peak, o.lr_end, warmup, max_steps)


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimiser ``name`` (``optim.name``: ``adamw`` or ``sgd``) over parameter ``groups``
    (:func:`param_groups`, which carry the weight decay).

    SGD's weight decay is the classic L2 penalty (coupled with the gradient), AdamW's the
    decoupled decay; both skip the no-decay group.
    """
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ConfigError(f"optim.name '{name}' is not an optimiser; use adamw or sgd")


def build_loss(lc: LossConfig) -> nn.Module:
    """The training loss named by ``loss.kind`` with the configured weights."""
    if lc.kind == "cmfs":
        return CMFSLoss(seg=lc.seg, fusion=lc.fusion, intensity=lc.intensity, color=lc.color,
                        gradient=lc.gradient, gamma=lc.gamma, beta=lc.beta, moe_balance=lc.moe_balance)
    if lc.kind == "mafs_stage1":
        return MAFSStage1Loss(alpha_intensity=lc.rec_intensity, alpha_gradient=lc.rec_gradient)
    if lc.kind == "mafs_stage2":
        return MAFSStage2Loss(fusion_intensity=lc.intensity, fusion_gradient=lc.gradient, seg_ce=lc.seg,
                              seg_aux=lc.seg_aux, binary=lc.binary, boundary=lc.boundary, kd=lc.kd,
                              kd_temperature=lc.kd_temperature, ohem_thresh=lc.ohem_thresh,
                              ohem_min_kept=lc.ohem_min_kept, boundary_width=lc.boundary_width,
                              alpha=lc.fair_alpha, dwa_temperature=lc.dwa_temperature, dwa_period=lc.dwa_period)
    perception = PerceptionLoss(lc.resnet50_weights) if lc.perception > 0 or lc.perception_texture > 0 else None
    return FusionSegLoss(seg=lc.seg, fusion=lc.fusion, intensity=lc.intensity, ssim=lc.ssim,
                         gradient=lc.gradient, color=lc.color, perception=perception,
                         perception_weight=lc.perception, perception_texture=lc.perception_texture)


def set_text_features(model: nn.Module, m: ModelConfig, class_names: Sequence[str], cache_dir: Path) -> None:
    """Give a text-guided model (CMFS) the CLIP features of its class prompts (all classes but 0).

    Weights loaded with ``model.init_from`` already carry features; a configured source replaces
    them. Without either, the error lists what to provide.
    """
    if not hasattr(model, "set_text_features"):
        if m.text_features or m.clip_weights:
            raise ConfigError(f"{m.variant} is not text-guided; remove model.text_features / model.clip_weights")
        return
    if not (m.text_features or m.clip_weights) and getattr(model, "has_text_features", False):
        return
    try:
        features = text_features_for(list(class_names[1:]), features_file=m.text_features,
                                     clip_weights=m.clip_weights, cache_dir=cache_dir)
    except TextFeaturesError as exc:
        raise ConfigError(str(exc)) from None
    model.set_text_features(features)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups: decay for weights; none for norms, biases, 1-D and flagged parameters.

    Parameters carrying ``_no_weight_decay = True`` (Mamba's ``A_log`` and ``D``) must not be
    pulled towards zero: ``A_log`` parameterises the state decay and ``D`` the skip path.
    """
    no_decay_ids = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_no_weight_decay", False) or p.ndim <= 1 or name.endswith(".bias") or id(p) in no_decay_ids:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _voc_palette(n: int) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class ids), distinct for any n ≤ 256."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append(r << 16 | g << 8 | b)
    return out


def resolve_classes(num_classes: int, names: Sequence[str], palette: Sequence[int],
                    dataset_kind: str | None = None) -> tuple[list[str], list[int]]:
    """Class names and palette: given ones, else the benchmark's table (``dataset_kind`` one of
    :data:`CLASS_TABLES`) when its size fits, else MFNet's for 9 classes, else generic ones."""
    table = CLASS_TABLES.get(dataset_kind or "")
    if table is None or len(table) != num_classes:
        table = CLASS_TABLES["mfnet"] if num_classes == len(MFNET_CLASSES) else None
    if not names:
        names = list(table.classes) if table else [f"class_{i}" for i in range(num_classes)]
    if not palette:
        palette = list(table.palette) if table else _voc_palette(num_classes)
    return list(names), list(palette)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a valid torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=auto or cpu")
    return device


def _resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision (always on the CPU)."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp != "auto":
            _log.info("amp=%s ignored: mixed precision is only used on CUDA (training on %s)", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp=bf16 requested but this GPU does not support bfloat16; use amp=fp16 or auto")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------
# trainer


def _is_engine_weights(path: Path) -> bool:
    """Engine weights have a sidecar with the engine format; a run's ``best.json`` is not one."""
    side = sidecar_path(path)
    try:
        return side.is_file() and json.loads(side.read_text()).get("format") == WEIGHTS_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """Start from trained weights (fine-tuning, stage hand-over) instead of a random init.

    Accepts engine weights (with a JSON sidecar, read through the engine's loader so pickles
    are refused the same way) or a run's checkpoint ``.safetensors``. The tensors must fit the
    model exactly: a silent partial load would make the recipe lie about what it trained.
    """
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} does not exist")
    if _is_engine_weights(path):
        state, _ = load_weights(path)
    else:
        try:
            state = read_safetensors(path, what="model.init_from file")
        except TensorFileError as exc:
            raise ConfigError(str(exc)) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"model.init_from: {path} does not fit the configured model: {exc}") from exc
    _log.info("initialised the model from %s", path)


class Trainer:
    """Trains one model on one data mix; see the module docstring for the run directory.

    All arguments are plain values (the configuration is unpacked by :meth:`from_config`).

    Args:
        model: the network (a ``FusionSegModel``), on the CPU; moved to ``device`` here.
        loss_fn: the combined loss.
        train_set: training samples before augmentation (dicts as in ``ivf_training.datasets``).
        val_set: validation samples at full size, or ``None``.
        run_dir: the run directory (created by :func:`start_run`).
        augment: the joint augmentation applied to training samples.
        batch_size: training batch size.
        max_steps: number of optimiser steps.
        schedule: learning rate per step.
        weight_decay, betas, eps: AdamW settings (``weight_decay`` also SGD's).
        grad_clip: maximum global gradient norm, or ``None``.
        amp: ``auto``, ``bf16``, ``fp16`` or ``off`` (CUDA only).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: data order / augmentation seed (model initialisation is seeded by the caller).
        val_every, ckpt_every, log_every: intervals in steps (0: only at the end, for the first two).
        num_workers: DataLoader workers.
        best_metric, best_mode: validation metric selecting ``ckpt/best`` and its direction.
        progress: show a tqdm bar.
        num_classes, class_names: for the confusion matrix.
        objective: forward pass(es) + loss of a batch (:mod:`ivf_training.objectives`); default
            the single forward pass of the s4fusion/cmfs losses.
        optimizer: ``adamw`` or ``sgd``.
        momentum: SGD momentum.
        accum_steps: micro-batches per optimiser step (gradient accumulation).
        ema_decay: decay of the weight average used for validation and export; ``None``: off.
        tensorboard: write TensorBoard events to ``RUN_DIR/tb`` (rank 0).
        image_every: TensorBoard image grid every this many steps (0: never).
        palette: 0xRRGGBB per class, for the image grids.
        ddp_find_unused_parameters, sync_batchnorm: data-parallel options (used under torchrun;
            see :mod:`ivf_training.distributed`).
    """

    def __init__(self, *, model: nn.Module, loss_fn: nn.Module, train_set: Dataset, val_set: Dataset | None,
                 run_dir: Path, augment: JointAugment, batch_size: int, max_steps: int,
                 schedule: Callable[[int], float],
                 weight_decay: float, betas: tuple[float, float], eps: float, grad_clip: float | None, amp: str,
                 device: str, seed: int, val_every: int, ckpt_every: int, log_every: int, num_workers: int,
                 best_metric: str, best_mode: str, progress: bool, num_classes: int,
                 class_names: Sequence[str], objective: Objective | None = None, optimizer: str = "adamw",
                 momentum: float = 0.9, accum_steps: int = 1, ema_decay: float | None = None,
                 tensorboard: bool = True, image_every: int = 0, palette: Sequence[int] = (),
                 ddp_find_unused_parameters: bool = False, sync_batchnorm: bool = False) -> None:
        self.dist = DistContext.current()
        self.device = self.dist.place(_resolve_device(device))
        self.amp_dtype = _resolve_amp(amp, self.device)
        self.model = convert_sync_batchnorm(model, self.dist, self.device) if sync_batchnorm else model
        self.model = self.model.to(self.device)
        self.loss_fn = loss_fn.to(self.device)
        self.objective = (objective or SupervisedObjective()).to(self.device)
        self.objective.prepare(self.model)  # freezes what the objective does not train
        self.run_dir = Path(run_dir)
        self.train_set = AugmentedDataset(train_set, augment, seed)
        self.val_set = val_set
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.schedule = schedule
        self.grad_clip = grad_clip
        self.val_every = val_every
        self.ckpt_every = ckpt_every
        self.log_every = log_every
        self.num_workers = num_workers
        self.progress = progress and self.dist.is_main
        self.num_classes = num_classes
        self.class_names = list(class_names)
        known = self.validation_metric_names()
        if best_metric not in known:
            raise ConfigError(f"best_metric '{best_metric}' is not a validation metric; choose one of {', '.join(known)}")
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.sampler = ResumableBatchSampler(len(self.train_set), batch_size, seed)
        self.optimizer = build_optimizer(optimizer, param_groups(self.model, weight_decay), schedule(0), betas=betas,
                                         eps=eps, momentum=momentum)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, float | None] = {}
        self.last_val: dict[str, float | None] = {}
        self.last_ckpt_step: int | None = None
        if batch_size % (self.dist.world_size * accum_steps):
            raise ConfigError(f"batch_size {batch_size} must be divisible by ranks × accum_steps = "
                              f"{self.dist.world_size} × {accum_steps}")
        self.accum_steps = accum_steps
        self.ema = ModelEMA(self.model, ema_decay) if ema_decay else None
        # after objective.prepare: DDP registers only the parameters that are trained; the objective
        # names the training path (MAFS stage I: the model's reconstruct), which DDP must wrap
        self.train_model = wrap_model(self.objective.training_module(self.model), self.dist, self.device,
                                      find_unused_parameters=ddp_find_unused_parameters)
        self.tb = TensorBoardLogger(self.run_dir / "tb", enabled=tensorboard and self.dist.is_main,
                                    image_every=image_every, palette=palette)
        if self.dist.enabled:  # the same initial weights everywhere, but each rank its own dropout
            torch.manual_seed(seed * self.dist.world_size + self.dist.rank)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, ``ckpt/best`` and export use: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # ---- construction from a configuration ---------------------------------------------------

    @classmethod
    def from_config(cls, cfg: TrainConfig, run_dir: Path) -> "Trainer":
        """Seed, build the model, datasets and loss from ``cfg`` and unpack it into a Trainer."""
        seed_everything(cfg.seed)
        m = cfg.model
        model = build_model(m.variant, preset=m.preset, num_classes=m.num_classes, **m.overrides)
        if m.init_from:
            load_initial_weights(model, Path(m.init_from))
        class_names, palette = resolve_classes(m.num_classes, cfg.data.class_names, cfg.data.palette, cfg.data.kind)
        set_text_features(model, m, class_names, run_dir / "cache")
        multiple = int(getattr(model, "input_multiple", 1))
        for name in ("crop", "crop_width"):
            size = getattr(cfg, name)
            if size is not None and size % multiple:
                lower, upper = size - size % multiple, size + multiple - size % multiple
                raise ConfigError(
                    f"{name} {size} is not divisible by {m.variant}'s input_multiple {multiple}; "
                    f"use {name}={max(lower, multiple)} or {name}={upper}"
                )
        train_set, val_set = build_datasets(cfg)
        loss_fn = build_loss(cfg.loss)
        objective = build_objective(cfg.loss, m.num_classes)
        # TrainConfig.validate guarantees that max_steps or epochs is set
        max_steps = cfg.max_steps or int(cfg.epochs or 0) * (len(train_set) // cfg.batch_size)  # type: ignore[arg-type]
        o = cfg.optim
        schedule = build_schedule(o, max_steps, steps_per_epoch=max(1, len(train_set) // cfg.batch_size))
        return cls(
            model=model, loss_fn=loss_fn, train_set=train_set, val_set=val_set, run_dir=run_dir,
            augment=JointAugment(cfg.crop, cfg.data.scale_range, cfg.data.hflip, cfg.crop_width, cfg.data.rot90),
            batch_size=cfg.batch_size,
            max_steps=max_steps, schedule=schedule, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps,
            grad_clip=o.grad_clip, amp=cfg.amp, device=cfg.device, seed=cfg.seed, val_every=cfg.val_every,
            ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, num_workers=cfg.num_workers,
            best_metric=cfg.best_metric, best_mode=cfg.best_mode, progress=cfg.progress,
            num_classes=m.num_classes, class_names=class_names, objective=objective, optimizer=o.name,
            momentum=o.momentum,
            accum_steps=cfg.accum_steps, ema_decay=cfg.ema_decay, tensorboard=cfg.tensorboard,
            image_every=cfg.image_every, palette=palette if m.num_classes else (),
            ddp_find_unused_parameters=cfg.ddp_find_unused_parameters, sync_batchnorm=cfg.sync_batchnorm,
        )

    def validation_metric_names(self) -> list[str]:
        """Names that validation can produce (valid choices for ``best_metric``)."""
        if not self.objective.scores_outputs:  # e.g. MAFS stage I: no fused image, no segmentation
            return [f"loss/{t}" for t in _LOSS_TERMS]
        names = [f"fusion/{n}" for n in FUSION_VAL_METRICS] + [f"loss/{t}" for t in _LOSS_TERMS]
        if self.num_classes == 0:
            return names
        return list(SEG_VAL_METRICS) + [f"IoU/{c}" for c in self.class_names] + names

    # ---- paths -------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "ckpt"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # ---- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``ckpt/last.*`` (the previous pair becomes ``ckpt/prev.*``); rank 0 writes, with
        every rank's RNG state, and all ranks return once it is on disk."""
        rng = gather_objects(capture_rng(), self.dist)  # a collective: every rank takes part
        if self.dist.is_main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng[0],
                "best": {"value": self.best_value, "step": self.best_step, "metrics": dict(self.best_metrics)},
                "last_val": dict(self.last_val),
                "objective": self.objective.state_dict(self.loss_fn),
            }
            if self.dist.enabled:
                state["rng_ranks"] = rng
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            save_checkpoint(self.ckpt_dir, self.model.state_dict(), state)
        barrier(self.dist)
        self.last_ckpt_step = self.step

    def load_checkpoint(self, tag: str = "last") -> None:
        """Restore model, optimiser, scaler, RNG, step and best-so-far from ``ckpt/<tag>``."""
        model_state, state = load_checkpoint(self.ckpt_dir, tag)
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {self.ckpt_dir}/{tag} does not fit the model built from config.yaml: {exc}"
            ) from exc
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(self.loss_fn, state.get("objective", {}))
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"checkpoint {self.ckpt_dir}/{tag} holds no EMA weights, but ema_decay is set")
            self.ema.load_state_dict(state["ema"])
        # each rank continues its own random stream; with another world size, rank 0's is reused
        rng_ranks = state.get("rng_ranks", [])
        restore_rng(rng_ranks[self.dist.rank] if len(rng_ranks) == self.dist.world_size else state["rng"])
        self.step = int(state["step"])
        best = state["best"]
        self.best_value, self.best_step = best["value"], best["step"]
        self.best_metrics = dict(best["metrics"])
        self.last_val = dict(state["last_val"])
        self.last_ckpt_step = self.step
        if self.step > self.max_steps:
            raise CheckpointError(f"checkpoint step {self.step} is beyond max_steps {self.max_steps}")
        barrier(self.dist)  # every rank has read the checkpoint before rank 0 renames files
        if not self.dist.is_main:
            return
        if tag == "prev":
            # last.* is newer (or corrupt): keep it out of the rotation, which would otherwise make
            # it the next "prev"
            self._set_aside(("last.safetensors", "last.state.pt"), f"stale-after-step{self.step}")
        self._set_aside_stale_best()
        self._truncate_log()

    def _set_aside(self, names: Sequence[str], prefix: str) -> None:
        """Rename checkpoint files that no longer belong to this run's timeline (never delete)."""
        for name in names:
            path = self.ckpt_dir / name
            if path.exists():
                target = path.with_name(f"{prefix}-{name}")
                path.replace(target)
                _log.warning("set aside %s as %s: it is not part of the resumed run", path, target.name)

    def _set_aside_stale_best(self) -> None:
        """Rename ``ckpt/best.*`` written after the checkpoint we resume from (e.g. resuming from
        ``prev``): it belongs to discarded progress and must not be exported as this run's best."""
        best_json = self.ckpt_dir / "best.json"
        if not best_json.is_file():
            return
        try:
            best_step = json.loads(best_json.read_text()).get("step")
        except json.JSONDecodeError:
            best_step = None
        if best_step != self.best_step:
            self._set_aside(("best.safetensors", "best.json"), f"stale-step{best_step}")

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint (they will be recomputed), note the resume."""
        lines = []
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by the interruption
                    continue
                if record.get("step", 0) <= self.step:
                    lines.append(line)
        lines.append(json.dumps({"kind": "resume", "step": self.step, "time": time.time()}))
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.log_path)

    def _save_best(self, metrics: Mapping[str, float | None]) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_model_file(self.eval_model.state_dict(), self.ckpt_dir / "best.safetensors",
                        {"step": str(self.step), "metric": self.best_metric})
        tmp = self.ckpt_dir / "best.json.tmp"
        tmp.write_text(json.dumps({"step": self.step, "best_metric": self.best_metric,
                                   "value": self.best_value, "metrics": dict(metrics)}, indent=2) + "\n")
        tmp.replace(self.ckpt_dir / "best.json")

    # ---- training ----------------------------------------------------------------------------

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        self.sampler.set_epoch(epoch, skip_batches)
        self.train_set.set_epoch(epoch)
        # A private generator keeps the DataLoader from drawing its base seed from the global RNG
        # (which would shift dropout/drop-path randomness depending on where an epoch starts).
        # under torchrun each rank loads its slice of every global batch
        sampler = (ShardedBatchSampler(self.sampler, self.dist.rank, self.dist.world_size)
                   if self.dist.enabled else self.sampler)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def _autocast(self) -> torch.autocast:
        """The mixed-precision context of model forward passes (disabled at full precision)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One optimiser step on this rank's share of the global batch, in ``accum_steps``
        micro-batches whose scaled losses add up to the mean over the share (the returned terms
        are micro-batch means)."""
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = split_batch(batch, self.accum_steps)
        terms: dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            rgb = micro["rgb"].to(self.device, non_blocking=True)
            thermal = micro["thermal"].to(self.device, non_blocking=True)
            labels = micro["labels"].to(self.device, non_blocking=True)
            with grad_sync(self.train_model, last_micro_batch=i == len(micro_batches) - 1):
                loss, micro_terms = self.objective.train_step(self.train_model, self.loss_fn, rgb, thermal, labels,
                                                              self._autocast)
                if not torch.isfinite(loss):
                    shown = {k: round(float(v), 5) for k, v in micro_terms.items()}
                    raise FloatingPointError(
                        f"loss became non-finite at step {self.step} ({shown}); lower optim.lr_peak, keep "
                        f"optim.grad_clip set, or use amp=off. Last checkpoint: step {self.last_ckpt_step}"
                    )
                self.scaler.scale(loss / len(micro_batches)).backward()
            for k, v in micro_terms.items():
                terms[k] = terms[k] + v / len(micro_batches) if k in terms else v / len(micro_batches)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return terms

    def fit(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``stop_at_step``, checkpointing there), validating and
        checkpointing on schedule.

        Args:
            stop_at_step: stop after this step with a checkpoint, to split a long run into
                time-boxed sessions continued by ``resume``.

        Returns:
            ``{"step", "best_metric", "best_value", "best_step", "last_val"}``.
        """
        end = self.max_steps if stop_at_step is None else min(self.max_steps, stop_at_step)
        bpe = self.sampler.batches_per_epoch
        self.model.train()
        self.loss_fn.train()
        sums: dict[str, torch.Tensor] = {}  # summed on the device: no host sync per step
        count, t_log = 0, time.perf_counter()
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, unit="step")
        self.tb.open(self.step)
        try:
            while self.step < end:
                epoch = self.step // bpe
                for batch in self._loader(epoch, self.step % bpe):
                    terms = self._train_step(batch)
                    self.step += 1
                    if self.step % bpe == 0:
                        self.objective.end_epoch(self.loss_fn)
                    bar.update(1)
                    for k, v in terms.items():
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    count += 1
                    if self.objective.scores_outputs and self.tb.wants_images(self.step):  # a fused image to show
                        self.tb.images(self.step, self.eval_model, batch, device=self.device, amp_dtype=self.amp_dtype)
                    if self.step % self.log_every == 0 or self.step == end:
                        now = time.perf_counter()
                        # means over equal-sized shares: their mean over the ranks is the global batch's
                        means = mean_across_ranks({k: float(v) / count for k, v in sums.items()}, self.dist)
                        rates = {"lr": self.schedule(self.step - 1),
                                 "imgs_per_s": count * self.batch_size / max(now - t_log, 1e-9)}
                        if self.dist.is_main:
                            _append_jsonl(self.log_path, {"kind": "train", "step": self.step, "epoch": epoch,
                                                          "time": time.time(), **rates, **means})
                        self.tb.scalars("train", {**rates, **means}, self.step)
                        bar.set_postfix(loss=f"{means['total']:.4f}")
                        sums, count, t_log = {}, 0, now
                    finished = self.step >= end
                    if (self.val_every and self.step % self.val_every == 0) or (finished and self.step == self.max_steps):
                        self.validate_and_track()
                    if (self.ckpt_every and self.step % self.ckpt_every == 0) or finished:
                        self.save_checkpoint()
                    if finished:
                        break
        finally:
            bar.close()
            self.tb.close()
        return {"step": self.step, "best_metric": self.best_metric, "best_value": self.best_value,
                "best_step": self.best_step, "last_val": dict(self.last_val)}

    # ---- validation --------------------------------------------------------------------------

    def validate_and_track(self) -> dict[str, float | None]:
        """Validate, log, and update ``ckpt/best`` when ``best_metric`` improved."""
        metrics = self.validate()
        self.last_val = metrics
        if self.dist.is_main:
            _append_jsonl(self.log_path, {"kind": "val", "step": self.step, **metrics})
        self.tb.scalars("val", metrics, self.step)
        value = metrics.get(self.best_metric)
        if value is not None:
            better = self.best_value is None or (
                value > self.best_value if self.best_mode == "max" else value < self.best_value
            )
            if better:  # the reduced metrics are equal on all ranks, and so is this decision
                self.best_value, self.best_step, self.best_metrics = value, self.step, dict(metrics)
                if self.dist.is_main:
                    self._save_best(metrics)
        if self.progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                              if k in (self.best_metric, "loss/total") and v is not None)
            tqdm.write(f"step {self.step}: {shown}")
        return metrics

    def validate(self) -> dict[str, float | None]:
        """Metrics of :attr:`eval_model` on the validation set at full size (batch 1, padded to the
        model's multiple) through the objective's ``validation_step``; under torchrun every rank
        validates a shard and the sums are reduced.

        Returns:
            ``mIoU`` & co. over labelled images (one confusion matrix over the set), the means of
            ``fusion/<metric>`` over all images, and ``loss/<term>`` means
            (:func:`~ivf_training.validation.validate_model`).
        """
        if self.val_set is None:
            return {}
        model = self.eval_model
        multiple = int(getattr(model, "input_multiple", 1))

        def step(rgb: torch.Tensor, thermal: torch.Tensor, labels: torch.Tensor | None,
                 index: int) -> tuple[FusionSegOutput | None, Mapping[str, torch.Tensor]]:
            return self.objective.validation_step(model, self.loss_fn, rgb, thermal, labels, self._autocast,
                                                  multiple, index)

        return validate_model(step, self.val_set, modules=(model, self.loss_fn), device=self.device,
                              num_classes=self.num_classes, class_names=self.class_names,
                              num_workers=self.num_workers, dist=self.dist)


# --------------------------------------------------------------------------------------------
# datasets from the configuration


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training mix and the validation set described by ``cfg.data``.

    ``train_folders`` and ``val_folders`` are read as ``cfg.data.kind`` through
    :func:`~ivf_training.datasets.build_dataset`, which lists missing or unmatched files and checks
    every label file against the class table now, before the first step, not hours into a run.
    """
    d, g = cfg.data, cfg.data.generated
    k = cfg.model.num_classes or None
    train_split = d.train_split or default_split(d.kind, "train")
    val_split = d.val_split or default_split(d.kind, "val")
    parts: list[tuple[Dataset, int]] = []
    if g.train_count:
        parts.append((build_dataset("generated", count=g.train_count, config=g.scene, start=g.train_start), 1))
    for root in d.train_folders:
        dataset = build_dataset(d.kind, root, train_split, num_classes=k, short_side=d.real_short_side, **d.loader_options)
        parts.append((dataset, d.real_repeat))
    if d.train_real:
        parts.append((RealPairsDataset(d.train_real, short_side=d.real_short_side), d.real_repeat))
    train = build_mix(parts)
    val_parts: list[Dataset] = []
    if g.val_count:
        val_parts.append(build_dataset("generated", count=g.val_count, config=g.scene, start=g.val_start))
    for root in d.val_folders:
        val_parts.append(build_dataset(d.kind, root, val_split, num_classes=k, short_side=d.real_short_side,
                                       max_pairs=d.val_max_pairs, **d.loader_options))
    if d.val_real:
        val_parts.append(RealPairsDataset(d.val_real, short_side=d.real_short_side, max_pairs=d.val_max_pairs))
    val = None if not val_parts else val_parts[0] if len(val_parts) == 1 else ConcatDataset(val_parts)
    return train, val


# --------------------------------------------------------------------------------------------
# runs


def _run_name(cfg: TrainConfig, config_stem: str) -> str:
    return cfg.name or f"{config_stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(cfg: TrainConfig, config_stem: str = "run") -> Trainer:
    """Create the run directory (config.yaml, data.json) and a Trainer ready to ``fit``.

    Raises:
        ConfigError: the run directory already holds a run (resume it or choose another name).
    """
    ctx = DistContext.current()
    cfg.name = broadcast_object(_run_name(cfg, config_stem), ctx)  # one timestamped name for all ranks
    run_dir = Path(cfg.out_dir) / cfg.name
    if (run_dir / "config.yaml").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; continue it with `ivf-train resume {run_dir}` "
            "or choose another name=..."
        )
    trainer = Trainer.from_config(cfg, run_dir)  # builds everything first: fail before writing
    barrier(ctx)  # every rank has checked the directory before rank 0 writes into it
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        data = {"train": describe_dataset(trainer.train_set),
                "val": describe_dataset(trainer.val_set) if trainer.val_set else None}
        (run_dir / "data.json").write_text(json.dumps(data, indent=2) + "\n")
    return trainer


def read_run_config(run_dir: Path) -> TrainConfig:
    """The resolved configuration of a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return config_from_dict(data)


def resume_run(run_dir: str | Path, checkpoint: str = "last") -> Trainer:
    """A Trainer restored from ``RUN_DIR/ckpt/<checkpoint>``, ready to continue with ``fit``."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    trainer = Trainer.from_config(cfg, run_dir)
    trainer.load_checkpoint(checkpoint)
    return trainer


@dataclass
class RunWeights:
    """A trained model taken out of a run directory, with what its engine-weights sidecar records.

    Attributes:
        model: built from the run's configuration with the checkpoint's weights, on the CPU.
        info: variant, preset, classes, palette, input size, recipe, data and metrics.
        model_file: the checkpoint file the weights came from.
    """

    model: nn.Module
    info: WeightsInfo
    model_file: Path


def load_run_weights(source: str | Path, *, checkpoint: str | None = None) -> RunWeights:
    """The model of a run directory or checkpoint file, ready to export or evaluate.

    Args:
        source: a run directory, or a model file inside its ``ckpt/`` folder.
        checkpoint: ``best``, ``last`` or ``prev`` when ``source`` is a run directory; default
            ``best`` if it exists, else ``last``.

    With ``ema_decay`` set, ``best`` already holds the averaged weights and ``last``/``prev``
    carry them in their state file: the averaged weights are what this returns. ``info.metrics``
    holds the validation metrics of the checkpoint's best, or its last validation.

    Raises:
        ConfigError: ``source`` is not a run directory.
        CheckpointError: the model file is missing, corrupt, or does not fit the configured model.
    """
    source = Path(source)
    if source.is_file():
        model_file, run_dir = source, source.parent.parent
    else:
        run_dir = source
        tag = checkpoint or ("best" if (run_dir / "ckpt" / "best.safetensors").exists() else "last")
        model_file = run_dir / "ckpt" / f"{tag}.safetensors"
    cfg = read_run_config(run_dir)
    if not model_file.is_file():
        raise CheckpointError(f"no model file {model_file}; train first or choose --checkpoint last")
    if model_file.name.startswith(("last", "prev")):
        model_state, state = load_checkpoint(model_file.parent, model_file.name.split(".")[0])
        if "ema" in state:
            model_state = state["ema"]["weights"]
        metrics = {"step": state["step"], **state["last_val"]}
    else:
        try:
            model_state = read_safetensors(model_file, what="checkpoint model file")
        except TensorFileError as exc:
            raise CheckpointError(str(exc)) from exc
        best_json = model_file.with_suffix(".json")
        best = json.loads(best_json.read_text()) if best_json.is_file() else {}
        metrics = {"step": best.get("step"), **best.get("metrics", {})}
    m = cfg.model
    model_args = without_pretrained_files(m.overrides)  # the trained tensors replace ImageNet files
    model = build_model(m.variant, preset=m.preset, num_classes=m.num_classes, **model_args)
    try:
        model.load_state_dict(model_state)  # refuse to export tensors the engine could not load
    except RuntimeError as exc:
        raise CheckpointError(f"{model_file} does not fit {m.variant}/{m.preset}: {exc}") from exc
    classes, palette = resolve_classes(m.num_classes, cfg.data.class_names, cfg.data.palette, cfg.data.kind)
    data_json = run_dir / "data.json"
    info = WeightsInfo(
        variant=m.variant, preset=m.preset, num_classes=m.num_classes, model_args=model_args,
        classes=classes if m.num_classes else [], palette=palette if m.num_classes else [],
        input_size=[cfg.crop, cfg.crop_width or cfg.crop], recipe=config_to_dict(cfg),
        data=json.loads(data_json.read_text()) if data_json.is_file() else {},
        metrics={"checkpoint": model_file.name, "best_metric": cfg.best_metric, **metrics},
    )
    return RunWeights(model.eval(), info, model_file)


def export_engine_weights(source: str | Path, out_path: str | Path, *, checkpoint: str | None = None) -> Path:
    """Write engine weights (``.safetensors`` + sidecar) from a run directory or checkpoint file.

    Args:
        source: a run directory, or a model file inside its ``ckpt/`` folder.
        out_path: destination ``.safetensors``.
        checkpoint: ``best``, ``last`` or ``prev`` when ``source`` is a run directory; default
            ``best`` if it exists, else ``last``.

    The sidecar records the variant, preset, classes and palette, ``input_size`` (the training
    crop), ``recipe`` (the resolved configuration), ``data`` (data.json) and ``metrics`` (see
    :func:`load_run_weights`, which also says which weights an EMA run exports).

    Raises:
        CheckpointError: besides :func:`load_run_weights`' cases, a MAFS stage-I run, whose fusion
            and segmentation heads were never trained (export its stage-II run instead).
    """
    run = load_run_weights(source, checkpoint=checkpoint)
    if run.info.recipe.get("loss", {}).get("kind") == "mafs_stage1":
        raise CheckpointError(
            f"{source} is a MAFS stage-I (masked reconstruction) run: its fusion and segmentation heads are "
            "untrained. Start stage II from it (model.init_from) and export that run."
        )
    return save_weights(run.model.state_dict(), out_path, run.info)
