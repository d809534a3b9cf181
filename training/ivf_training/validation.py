"""Full-size validation: segmentation scores, fusion metrics and loss terms of a model on a set.

One implementation for the trainer's periodic validation and for ``ivf-train eval``, so the
numbers of an evaluated checkpoint equal those logged when it was trained. Under data-parallel
training each rank validates its shard (:func:`~ivf_training.distributed.shard_dataset`) and the
confusion matrices, fusion-metric sums and loss sums are reduced before any score is computed:
mIoU comes from one confusion matrix over the whole set, not from per-rank averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ivf_perception.engine.threads import single_thread_worker
from ivf_perception.metrics import (
    ConfusionAccumulator,
    average_gradient,
    correlation_coefficient,
    entropy,
    mutual_information,
    psnr,
    qabf,
    scd,
    segmentation_scores,
    spatial_frequency,
    ssim,
    std,
    to_gray_u8,
    vif,
)
from ivf_perception.models import FusionSegOutput
from ivf_training.augment import IGNORE_INDEX
from ivf_training.datasets.guidance import guidance_inputs
from ivf_training.distributed import DistContext, gather_objects, shard_dataset
from ivf_training.objectives import forward_full_size

__all__ = ["FUSION_FNS", "FUSION_VAL_METRICS", "FUSION_EVAL_METRICS", "SEG_VAL_METRICS", "ValidationStep",
           "forward_full_size", "validate_model"]

FusionFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

FUSION_FNS: dict[str, FusionFn] = {
    "EN": lambda f, a, b: entropy(f),
    "SD": lambda f, a, b: std(f),
    "SF": lambda f, a, b: spatial_frequency(f),
    "AG": lambda f, a, b: average_gradient(f),
    "MI": mutual_information,
    "CC": correlation_coefficient,
    "PSNR": psnr,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
}
"""Fusion metrics of a (fused, infrared, visible) gray-level triple, by name."""

FUSION_VAL_METRICS = ("EN", "SD", "SF", "AG", "MI", "SSIM", "Qabf")
"""Fusion metrics computed at validation during training (VIF, the slowest, and PSNR/CC/SCD are
left to the evaluation CLI); logged as ``fusion/<name>``."""

FUSION_EVAL_METRICS = tuple(FUSION_FNS)
"""All eleven fusion metrics, computed by ``ivf-train eval``."""

SEG_VAL_METRICS = ("mIoU", "mIoU_with_background", "background_IoU", "pixel_accuracy")
"""Scalar segmentation scores reported next to the per-class ``IoU/<name>``."""


def _finite_or_none(value: Any) -> float | None:
    """Undefined scores (a class never seen) become None: log.jsonl stays strict JSON."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _add(sums: dict[str, float], counts: dict[str, int], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value
    counts[key] = counts.get(key, 0) + 1


ValidationStep = Callable[..., tuple["FusionSegOutput | None", Mapping[str, torch.Tensor]]]
"""``(rgb, thermal, labels or None, index, **guidance) -> (output cropped to the input size or None, loss terms)``
(``guidance``: the TeSG batch keys of :func:`~ivf_training.datasets.guidance.guidance_inputs`, when the set has them):
one full-size image through the model (and the loss). The trainer's step is its objective's
``validation_step``; ``ivf-train eval`` uses :func:`forward_full_size` and no loss."""


@torch.no_grad()
def validate_model(step: ValidationStep, dataset: Dataset, *, modules: Sequence[nn.Module], device: torch.device,
                   num_classes: int, class_names: Sequence[str], fusion_metrics: Sequence[str] = FUSION_VAL_METRICS,
                   num_workers: int = 0, dist: DistContext | None = None,
                   progress: bool = False) -> dict[str, float | None]:
    """Metrics on ``dataset`` at full size (batch 1), one image at a time through ``step``.

    Args:
        step: see :data:`ValidationStep`; ``labels`` is None for an unlabelled image (its
            segmentation terms would dilute the means), ``index`` the image's position in
            ``dataset`` (for reproducible per-image randomness).
        dataset: samples with ``rgb`` (3, H, W), ``thermal`` (1, H, W) and ``labels`` (H, W),
            255 where unlabelled; images may differ in size.
        modules: put in eval mode for the pass and restored afterwards (the model, the loss).
        device: where the model lives.
        num_classes: ``K``; 0 for fusion-only models (no segmentation scores).
        class_names: ``K`` names, the keys of ``IoU/<name>``.
        fusion_metrics: names from :data:`FUSION_FNS` to compute on every image.
        num_workers: DataLoader workers.
        dist: the data-parallel context (None: a single process, ``DistContext()``); every
            rank must call this function.
        progress: show a progress bar (rank 0 only).

    Returns:
        ``mIoU`` & co. and ``IoU/<class>`` over labelled images (one confusion matrix over the
        set; ``None`` where undefined), the means of ``fusion/<metric>`` over the images with an
        output, and ``loss/<term>`` means over the images the term was computed on.
    """
    if dist is None:
        dist = DistContext()
    unknown = sorted(set(fusion_metrics) - set(FUSION_FNS))
    if unknown:
        raise ValueError(f"unknown fusion metric(s) {unknown}; choose from {', '.join(FUSION_FNS)}")
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    conf = ConfusionAccumulator(num_classes, IGNORE_INDEX, list(class_names)) if num_classes > 0 else None
    fusion_sums: dict[str, float] = {}
    fusion_counts: dict[str, int] = {}
    loss_sums: dict[str, float] = {}
    loss_counts: dict[str, int] = {}
    shard = shard_dataset(dataset, dist)
    indices = shard.indices if isinstance(shard, Subset) else range(len(shard))  # type: ignore[arg-type]
    loader = DataLoader(shard, batch_size=1, num_workers=num_workers, worker_init_fn=single_thread_worker)
    try:
        for index, batch in zip(indices, tqdm(loader, disable=not (progress and dist.is_main), unit="img",
                                              dynamic_ncols=True, leave=False)):
            rgb = batch["rgb"].to(device)
            thermal = batch["thermal"].to(device)
            labels = batch["labels"].to(device)
            labelled = bool((labels != IGNORE_INDEX).any())
            out, terms = step(rgb, thermal, labels if labelled else None, index, **guidance_inputs(batch, device))
            for k, v in terms.items():
                _add(loss_sums, loss_counts, k, float(v))
            if out is None:  # nothing to score (e.g. MAFS stage I reconstructs instead of fusing)
                continue
            if conf is not None and out.logits is not None and labelled:
                conf.update(out.logits.argmax(1).cpu(), labels.cpu())
            f = to_gray_u8(out.fused[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            a = to_gray_u8(thermal[0, 0].cpu().numpy())
            b = to_gray_u8(rgb[0].permute(1, 2, 0).cpu().numpy())
            for name in fusion_metrics:
                _add(fusion_sums, fusion_counts, name, float(FUSION_FNS[name](f, a, b)))
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return _reduce_and_score(conf, fusion_sums, fusion_counts, loss_sums, loss_counts, list(class_names), dist)


def _reduce_and_score(conf: ConfusionAccumulator | None, fusion_sums: Mapping[str, float],
                      fusion_counts: Mapping[str, int], loss_sums: Mapping[str, float],
                      loss_counts: Mapping[str, int], class_names: list[str],
                      dist: DistContext) -> dict[str, float | None]:
    """Sum every rank's partial results (in rank order), then compute the scores once."""
    local = {
        "conf": conf.compute() if conf is not None else None,
        "conf_updates": conf.num_updates if conf is not None else 0,
        "fusion": (dict(fusion_sums), dict(fusion_counts)),
        "loss": (dict(loss_sums), dict(loss_counts)),
    }
    parts = gather_objects(local, dist)
    metrics: dict[str, float | None] = {}
    if sum(p["conf_updates"] for p in parts):
        total = sum(p["conf"] for p in parts)
        scores = segmentation_scores(total, class_names)
        metrics.update({k: _finite_or_none(scores[k]) for k in SEG_VAL_METRICS})
        metrics.update({f"IoU/{name}": _finite_or_none(v) for name, v in scores["per_class_iou"].items()})
    for prefix, key in (("fusion", "fusion"), ("loss", "loss")):
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for part_sums, part_counts in (p[key] for p in parts):
            for name, value in part_sums.items():
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + part_counts[name]
        metrics.update({f"{prefix}/{name}": sums[name] / counts[name] for name in sums})
    return metrics
