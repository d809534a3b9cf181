"""The training loop: optimiser steps with AMP and accumulation, validation, logging, checkpoints.

One :class:`Trainer` trains one model on one data mix. What it is built from is read off the
configuration by :mod:`ivf_training.build`; the objective of ``loss.kind``
(:mod:`ivf_training.objectives`) says what a batch means; the files go to the run directory
(:mod:`ivf_training.run_dir`); the learning rate follows :mod:`ivf_training.schedules`, the
optimiser :mod:`ivf_training.optim`. Export is :mod:`ivf_training.export`.

Under ``torchrun`` every rank runs a Trainer on its slice of each global batch and rank 0 alone
writes the run directory (:mod:`ivf_training.distributed`).

Reproducibility: the seed fixes model initialisation (set before ``build_model``), the data
order (:class:`~ivf_training.datasets.ResumableBatchSampler`) and the augmentation
(:class:`~ivf_training.datasets.AugmentedDataset`); checkpoints hold optimiser, scaler and RNG
states (and the EMA weights), so resuming at step N reproduces an uninterrupted run on the CPU
bit for bit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ivf_perception.engine.threads import single_thread_worker
from ivf_perception.models import FusionSegOutput, build_model
from ivf_perception.models.registry import pinned_args
from ivf_training.augment import JointAugment
from ivf_training.build import (
    build_datasets,
    check_crop,
    freeze_seg_head,
    load_initial_weights,
    resolve_amp,
    resolve_classes,
    resolve_device,
    resolve_init_from,
    seed_everything,
    set_text_features,
    warn_if_unlabelled,
)
from ivf_training.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ivf_training.config import ConfigError, TrainConfig
from ivf_training.datasets import AugmentedDataset, ResumableBatchSampler, describe_dataset
from ivf_training.datasets.guidance import guidance_inputs
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
from ivf_training.objectives import Objective, build_objective
from ivf_training.optim import build_optimizer, param_groups
from ivf_training.run_dir import RunDir, read_run_config
from ivf_training.schedules import build_schedule
from ivf_training.tb_logging import TensorBoardLogger
from ivf_training.validation import FUSION_VAL_METRICS, SEG_VAL_METRICS, validate_model

__all__ = ["Trainer", "start_run", "resume_run"]

ScheduleFactory = Callable[[torch.optim.Optimizer], Scheduler]
"""Builds the learning-rate schedule over the trainer's optimiser (:func:`~ivf_training.schedules.build_schedule`)."""

_LOSS_TERMS = ("total", "seg_ce", "fus_intensity", "fus_ssim", "fus_gradient", "fus_color", "per_entropy", "omega_ir",
               "per_texture", "moe_balance",
               # MAFS stage I (masked reconstruction) and stage II (fusion + segmentation, DWA weights)
               "rec_rgb", "rec_rgb_intensity", "rec_rgb_gradient", "rec_thermal", "rec_thermal_intensity",
               "rec_thermal_gradient", "fusion", "segmentation", "seg_ohem", "seg_aux", "seg_binary", "seg_boundary",
               "seg_kd", "dwa_fusion", "dwa_segmentation")


class Trainer:
    """Trains one model on one data mix; see :mod:`ivf_training.run_dir` for what it writes.

    All arguments are plain values (the configuration is unpacked by :meth:`from_config`).

    Args:
        model: the network (a ``FusionSegModel``), on the CPU; moved to ``device`` here.
        loss_fn: the combined loss.
        train_set: training samples before augmentation (dicts as in ``ivf_training.datasets``).
        val_set: validation samples at full size, or ``None``.
        run_dir: the run directory (created by :func:`start_run`).
        objective: forward pass(es) + loss of a batch and the hooks of its ``loss.kind``
            (:mod:`ivf_training.objectives`).
        augment: the joint augmentation applied to training samples.
        batch_size: training batch size.
        max_steps: number of optimiser steps.
        lr: the optimiser's base (peak) learning rate, which ``schedule`` scales.
        schedule: builds the learning-rate schedule over the optimiser.
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
        optimizer: ``adamw`` or ``sgd``.
        momentum: SGD momentum.
        accum_steps: micro-batches per optimiser step (gradient accumulation).
        ema_decay: decay of the weight average used for validation and export; ``None``: off.
        tensorboard: write TensorBoard events to ``RUN_DIR/tb`` (rank 0).
        image_every: TensorBoard image grid every this many steps (0: never).
        palette: 0xRRGGBB per class, for the image grids.
        ddp_find_unused_parameters, sync_batchnorm: data-parallel options (used under torchrun;
            see :mod:`ivf_training.distributed`).
        val_at_start: validate before the first step (the starting weights of a fine-tune), so
            the summary compares the end with the start.
    """

    def __init__(self, *, model: nn.Module, loss_fn: nn.Module, train_set: Dataset, val_set: Dataset | None,
                 run_dir: Path, objective: Objective[Any], augment: JointAugment, batch_size: int, max_steps: int,
                 lr: float, schedule: ScheduleFactory,
                 weight_decay: float, betas: tuple[float, float], eps: float, grad_clip: float | None, amp: str,
                 device: str, seed: int, val_every: int, ckpt_every: int, log_every: int, num_workers: int,
                 best_metric: str, best_mode: str, progress: bool, num_classes: int,
                 class_names: Sequence[str], optimizer: str = "adamw",
                 momentum: float = 0.9, accum_steps: int = 1, ema_decay: float | None = None,
                 tensorboard: bool = True, image_every: int = 0, palette: Sequence[int] = (),
                 ddp_find_unused_parameters: bool = False, sync_batchnorm: bool = False,
                 val_at_start: bool = False) -> None:
        self.dist = DistContext.current()
        self.device = self.dist.place(resolve_device(device))
        self.amp_dtype = resolve_amp(amp, self.device)
        self.model = convert_sync_batchnorm(model, self.dist, self.device) if sync_batchnorm else model
        self.model = self.model.to(self.device)
        self.loss_fn = loss_fn.to(self.device)
        self.objective = objective.to(self.device)
        self.objective.prepare(self.model)  # freezes what the objective does not train
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.train_set = AugmentedDataset(train_set, augment, seed)
        self.val_set = val_set
        self.batch_size = batch_size
        self.max_steps = max_steps
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
            raise ConfigError(f"best_metric '{best_metric}' is not a validation metric; "
                              f"choose one of {', '.join(known)}")
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.sampler = ResumableBatchSampler(len(self.train_set), batch_size, seed)
        self.optimizer = build_optimizer(optimizer, param_groups(self.model, weight_decay), lr, betas=betas,
                                         eps=eps, momentum=momentum)
        self.schedule = schedule(self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, float | None] = {}
        self.last_val: dict[str, float | None] = {}
        self.val_at_start = val_at_start
        self.start_val: dict[str, float | None] = {}
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
    def from_config(cls, cfg: TrainConfig, run_dir: Path) -> Trainer:
        """Seed, build the model, datasets and loss from ``cfg`` and unpack it into a Trainer."""
        seed_everything(cfg.seed)
        m = cfg.model
        model = build_model(m.variant, preset=m.preset, num_classes=m.num_classes, **m.overrides)
        if m.init_from:
            load_initial_weights(model, resolve_init_from(m.init_from), m.reinit)
        if m.freeze_seg_head:
            freeze_seg_head(model, m.variant)
        class_names, palette = resolve_classes(m.num_classes, cfg.data.class_names, cfg.data.palette, cfg.data.kind)
        set_text_features(model, m, class_names, run_dir / "cache")
        check_crop(model, m.variant, cfg.crop, cfg.crop_width)
        train_set, val_set = build_datasets(cfg)
        warn_if_unlabelled(describe_dataset(train_set), m.num_classes, m.freeze_seg_head)
        objective, loss_fn = build_objective(cfg.loss, m.num_classes)
        # TrainConfig.validate guarantees that max_steps or epochs is set
        max_steps = cfg.max_steps or int(cfg.epochs or 0) * (len(train_set) // cfg.batch_size)  # type: ignore[arg-type]
        o = cfg.optim
        schedule = functools.partial(build_schedule, o, max_steps=max_steps,
                                     steps_per_epoch=max(1, len(train_set) // cfg.batch_size))
        return cls(
            model=model, loss_fn=loss_fn, train_set=train_set, val_set=val_set, run_dir=run_dir, objective=objective,
            augment=JointAugment(cfg.crop, cfg.data.scale_range, cfg.data.hflip, cfg.crop_width, cfg.data.rot90),
            batch_size=cfg.batch_size,
            max_steps=max_steps, lr=o.lr_peak, schedule=schedule, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps,
            grad_clip=o.grad_clip, amp=cfg.amp, device=cfg.device, seed=cfg.seed, val_every=cfg.val_every,
            ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, num_workers=cfg.num_workers,
            best_metric=cfg.best_metric, best_mode=cfg.best_mode, progress=cfg.progress,
            num_classes=m.num_classes, class_names=class_names, optimizer=o.name,
            momentum=o.momentum,
            accum_steps=cfg.accum_steps, ema_decay=cfg.ema_decay, tensorboard=cfg.tensorboard,
            image_every=cfg.image_every, palette=palette if m.num_classes else (),
            ddp_find_unused_parameters=cfg.ddp_find_unused_parameters, sync_batchnorm=cfg.sync_batchnorm,
            val_at_start=cfg.val_at_start and bool(m.init_from),
        )

    def validation_metric_names(self) -> list[str]:
        """Names that validation can produce (valid choices for ``best_metric``)."""
        if not self.objective.scores_outputs:  # e.g. MAFS stage I: no fused image, no segmentation
            return [f"loss/{t}" for t in _LOSS_TERMS]
        names = [f"fusion/{n}" for n in FUSION_VAL_METRICS] + [f"loss/{t}" for t in _LOSS_TERMS]
        if self.num_classes == 0:
            return names
        return list(SEG_VAL_METRICS) + [f"IoU/{c}" for c in self.class_names] + names

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
                "start_val": dict(self.start_val),
                "objective": self.objective.state_dict(self.loss_fn),
            }
            if self.dist.enabled:
                state["rng_ranks"] = rng
            if self.ema is not None:
                state["ema"] = self.ema.checkpoint_state()
            save_checkpoint(self.files.ckpt_dir, self.model.state_dict(), state)
        barrier(self.dist)
        self.last_ckpt_step = self.step

    def load_checkpoint(self, tag: str = "last") -> None:
        """Restore model, optimiser, scaler, RNG, step and best-so-far from ``ckpt/<tag>``."""
        ckpt_dir = self.files.ckpt_dir
        model_state, state = load_checkpoint(ckpt_dir, tag, recover=True)  # the run is ours: finish a killed save
        try:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {ckpt_dir}/{tag} does not fit the model built from config.yaml: {exc}"
            ) from exc
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(self.loss_fn, state.get("objective", {}))
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"checkpoint {ckpt_dir}/{tag} holds no EMA weights, but ema_decay is set")
            self.ema.load_checkpoint_state(state["ema"])
        # each rank continues its own random stream; with another world size, rank 0's is reused
        rng_ranks = state.get("rng_ranks", [])
        restore_rng(rng_ranks[self.dist.rank] if len(rng_ranks) == self.dist.world_size else state["rng"])
        self.step = int(state["step"])
        best = state["best"]
        self.best_value, self.best_step = best["value"], best["step"]
        self.best_metrics = dict(best["metrics"])
        self.last_val = dict(state["last_val"])
        self.start_val = dict(state.get("start_val", {}))
        self.last_ckpt_step = self.step
        if self.step > self.max_steps:
            raise CheckpointError(f"checkpoint step {self.step} is beyond max_steps {self.max_steps}")
        barrier(self.dist)  # every rank has read the checkpoint before rank 0 renames files
        if not self.dist.is_main:
            return
        self.files.rewind(self.step, self.best_step, tag)

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
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          worker_init_fn=single_thread_worker)

    def _autocast(self) -> torch.autocast:
        """The mixed-precision context of model forward passes (disabled at full precision)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One optimiser step on this rank's share of the global batch, in ``accum_steps``
        micro-batches whose scaled losses add up to the mean over the share (the returned terms
        are micro-batch means)."""
        self.schedule.step_update(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = split_batch(batch, self.accum_steps)
        terms: dict[str, torch.Tensor] = {}
        for i, micro in enumerate(micro_batches):
            rgb = micro["rgb"].to(self.device, non_blocking=True)
            thermal = micro["thermal"].to(self.device, non_blocking=True)
            labels = micro["labels"].to(self.device, non_blocking=True)
            guidance = guidance_inputs(micro, self.device)  # TeSG runs only; other kinds get none
            valid = micro["valid"].to(self.device, non_blocking=True) if "valid" in micro else None
            with grad_sync(self.train_model, last_micro_batch=i == len(micro_batches) - 1):
                loss, micro_terms = self.objective.train_step(self.train_model, self.loss_fn, rgb, thermal, labels,
                                                              self._autocast, valid, **guidance)
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
            ``{"step", "best_metric", "best_value", "best_step", "last_val", "start_val"}``
            (``start_val``: the step-0 validation, empty unless ``val_at_start``).
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
            if self.step == 0 and self.val_at_start and self.val_set is not None:
                self.start_val = self.validate_and_track()  # the starting weights, for the summary
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
                        rates = {"lr": self.optimizer.param_groups[0]["lr"],  # that of the last step
                                 "imgs_per_s": count * self.batch_size / max(now - t_log, 1e-9)}
                        if self.dist.is_main:
                            self.files.append_log({"kind": "train", "step": self.step, "epoch": epoch,
                                                          "time": time.time(), **rates, **means})
                        self.tb.scalars("train", {**rates, **means}, self.step)
                        bar.set_postfix(loss=f"{means['total']:.4f}")
                        sums, count, t_log = {}, 0, now
                    finished = self.step >= end
                    if ((self.val_every and self.step % self.val_every == 0)
                            or (finished and self.step == self.max_steps)):
                        self.validate_and_track()
                    if (self.ckpt_every and self.step % self.ckpt_every == 0) or finished:
                        self.save_checkpoint()
                    if finished:
                        break
        finally:
            bar.close()
            self.tb.close()
        result = {"step": self.step, "best_metric": self.best_metric, "best_value": self.best_value,
                  "best_step": self.best_step, "last_val": dict(self.last_val), "start_val": dict(self.start_val)}
        if self.dist.is_main and self.step == self.max_steps:
            self.files.write_summary(result)
        return result

    # ---- validation --------------------------------------------------------------------------

    def validate_and_track(self) -> dict[str, float | None]:
        """Validate, log, and update ``ckpt/best`` when ``best_metric`` improved."""
        metrics = self.validate()
        self.last_val = metrics
        if self.dist.is_main:
            self.files.append_log({"kind": "val", "step": self.step, **metrics})
        self.tb.scalars("val", metrics, self.step)
        value = metrics.get(self.best_metric)
        if value is not None:
            better = self.best_value is None or (
                value > self.best_value if self.best_mode == "max" else value < self.best_value
            )
            if better:  # the reduced metrics are equal on all ranks, and so is this decision
                self.best_value, self.best_step, self.best_metrics = value, self.step, dict(metrics)
                if self.dist.is_main:
                    self.files.save_best(self.eval_model.state_dict(), step=self.step, best_metric=self.best_metric,
                                         value=self.best_value, metrics=metrics)
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
                 index: int, **guidance: torch.Tensor) -> tuple[FusionSegOutput | None, Mapping[str, torch.Tensor]]:
            return self.objective.validation_step(model, self.loss_fn, rgb, thermal, labels, self._autocast,
                                                  multiple, index, **guidance)

        return validate_model(step, self.val_set, modules=(model, self.loss_fn), device=self.device,
                              num_classes=self.num_classes, class_names=self.class_names,
                              num_workers=self.num_workers, dist=self.dist)


def _run_name(cfg: TrainConfig, config_stem: str) -> str:
    return cfg.name or f"{config_stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run(cfg: TrainConfig, config_stem: str = "run", *, origin: Mapping[str, Any] | None = None) -> Trainer:
    """Create the run directory (config.yaml, data.json, origin.json) and a Trainer ready to ``fit``.

    Args:
        cfg: the resolved configuration.
        config_stem: the recipe file's stem, for the timestamped name of a run with no ``name``.
        origin: how the run was started (``{"recipe": file, "overrides": [...]}``), kept in
            ``origin.json`` so exported weights can list the recipes of every stage.

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
    # config.yaml records the switches the model was built with, so a later change of a preset's
    # default cannot rebuild this run differently (resume, export: ``with_legacy_args``)
    cfg.model.overrides = {**cfg.model.overrides, **pinned_args(cfg.model.variant, trainer.model)}
    barrier(ctx)  # every rank has checked the directory before rank 0 writes into it
    if ctx.is_main:
        trainer.files.write_start(cfg, {"train": describe_dataset(trainer.train_set),
                                        "val": describe_dataset(trainer.val_set) if trainer.val_set else None},
                                  origin)
    return trainer


def resume_run(run_dir: str | Path, checkpoint: str = "last") -> Trainer:
    """A Trainer restored from ``RUN_DIR/ckpt/<checkpoint>``, ready to continue with ``fit``."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    trainer = Trainer.from_config(cfg, run_dir)
    trainer.load_checkpoint(checkpoint)
    return trainer
