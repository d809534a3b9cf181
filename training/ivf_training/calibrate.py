"""Class-bias calibration: per-class logit offsets fitted for mIoU, folded into the classifier.

::

    ivf-train calibrate W.safetensors --out OUT.safetensors --dataset KIND [--root DIR] [-o KEY=VALUE ...]
    ivf-train calibrate W.safetensors --out W.safetensors --dataset generated -o 'config={seed: 3}' -o count=200

Why: a segmentation head trained with class-weighted cross-entropy (the rare-class stages of the
bundled default) over-predicts the rare classes: on generated scenes of seed 3 the bundled tiny
model labels bike at precision 0.21 and recall 0.70, and car stop at 0.52 and 0.73. The ranking
of the logits is right more often than their offsets; a constant per-class offset (logit
adjustment) trades recall back for precision where that raises the IoU. Nine numbers are fitted
on a labelled calibration set by coordinate ascent of mIoU (classes 1..K-1, the metric
``ivf-train eval`` reports) over a grid, then added to the bias of the final classifier layer.
Folded into the weights, the engine, ONNX and TensorRT run the calibrated model with no code of
their own, and the fused image is unchanged: the fusion path never reads the classifier.

The calibration set must be disjoint from the data the quality report holds out (its generated
seeds 7 and 11); the sidecar's lineage records the set and the offsets, and
``scripts/quality_report.py`` refuses to report on a seed the calibration saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.metrics.segmentation import confusion_matrix, iou_from_confusion, miou
from ivf_training.augment import IGNORE_INDEX
from ivf_training.datasets import build_dataset, default_split, describe_dataset
from ivf_training.objectives import forward_full_size

__all__ = ["CalibrationError", "BiasFit", "CalibrationSet", "CalibrationResult", "fit_class_biases",
           "confusion_with_biases", "fold_class_biases", "collect_logits", "calibrate_weights",
           "calibration_scene_seeds"]

DEFAULT_GRID = tuple(x / 8 for x in range(-24, 25))
"""Candidate offsets: -3 to 3 in steps of 1/8 (the offsets fitted for the bundled default lie within ±1.25)."""


class CalibrationError(IvfPerceptionError, ValueError):
    """The model or the calibration data cannot be calibrated (no labels, no classifier to fold into)."""


@dataclass
class BiasFit:
    """The fitted offsets and what they changed on the calibration set.

    Attributes:
        biases: one offset per class, added to the logits.
        miou_before, miou_after: mIoU (classes 1..K-1) on the calibration set.
        iou_before, iou_after: per-class IoU (None: class absent from labels and predictions).
    """

    biases: list[float]
    miou_before: float
    miou_after: float
    iou_before: list[float | None]
    iou_after: list[float | None]


_CHUNK = 1 << 22
"""Pixels per pass when counting, so a float32 copy of the logits never holds the whole set."""


def confusion_with_biases(logits: torch.Tensor, labels: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """The K×K confusion (rows: truth, columns: prediction) of ``argmax(logits + biases)``.

    Args:
        logits: K×P scores of P pixels (any float dtype; computed in float32).
        labels: P class ids; :data:`IGNORE_INDEX` pixels are left out.
        biases: K offsets.
    """
    k = logits.shape[0]
    conf = torch.zeros(k, k, dtype=torch.long)
    for first in range(0, logits.shape[1], _CHUNK):
        pred = (logits[:, first:first + _CHUNK].float() + biases.view(k, 1).float()).argmax(0)
        conf += torch.from_numpy(confusion_matrix(pred, labels[first:first + _CHUNK], k, IGNORE_INDEX))
    return conf


def _miou(conf: torch.Tensor) -> float:
    value = miou(conf.numpy())
    return -math.inf if math.isnan(value) else value


def _candidate_counts(logits: torch.Tensor, labels: torch.Tensor, biases: torch.Tensor, c: int,
                      thresholds: torch.Tensor) -> torch.Tensor:
    """Pixels counted by (margin bin, runner-up class, true class) for class ``c``.

    With the other offsets fixed, argmax labels a pixel ``c`` for offset ``v`` exactly when its
    margin ``logit_c - max_other(logit + offset)`` exceeds ``-v``, or equals it and ``c`` is the
    lower index (argmax's tie rule; ties are common with float16 scores and a 1/8 grid), and
    otherwise gives it the runner-up. Bin ``b`` holds the pixels labelled ``c`` for exactly the
    ``b`` lowest of the ascending ``thresholds``.
    """
    k, n = logits.shape[0], len(thresholds)
    counts = torch.zeros((n + 1) * k * k, dtype=torch.long)
    for first in range(0, logits.shape[1], _CHUNK):
        truth = labels[first:first + _CHUNK]
        keep = truth != IGNORE_INDEX
        chunk = logits[:, first:first + _CHUNK][:, keep].float()
        others = chunk + biases.view(k, 1)
        others[c] = -math.inf
        rest_max, runner_up = others.max(0)
        margin = chunk[c] - rest_max
        above = torch.where(runner_up > c, torch.bucketize(margin, thresholds, right=True),  # ties go to c
                            torch.bucketize(margin, thresholds))  # ties go to the runner-up
        counts += torch.bincount((above * k + runner_up) * k + truth[keep], minlength=(n + 1) * k * k)
    return counts.view(n + 1, k, k)


def _best_offset_for_class(logits: torch.Tensor, labels: torch.Tensor, biases: torch.Tensor, c: int,
                           grid: torch.Tensor) -> float:
    """The grid offset of class ``c`` that maximises mIoU with the other offsets held.

    One pass over the pixels scores every candidate (:func:`_candidate_counts`), as argmax would
    label them (up to float rounding of the sums). The current offset is kept unless a candidate
    beats it, so a sweep does not lower mIoU.
    """
    n = len(grid)
    thresholds = (-grid).flip(0).contiguous()  # candidate grid[i]'s threshold sits at index n-1-i
    counts = _candidate_counts(logits, labels, biases, c, thresholds)
    labelled_c = counts.flip(0).cumsum(0).flip(0)  # [b]: pixels in bins >= b, by runner-up and truth
    as_runner_up = counts.sum(0)
    scores = []
    for i in range(n):
        chosen = labelled_c[n - i]  # labelled c for grid[i]
        conf = (as_runner_up - chosen).transpose(0, 1).clone()  # truth × prediction
        conf[:, c] += chosen.sum(0)
        scores.append(_miou(conf))
    current = [i for i, v in enumerate(grid.tolist()) if v == float(biases[c])]
    best = max(range(n), key=scores.__getitem__)
    if current and scores[best] <= scores[current[0]] + 1e-9:
        return float(biases[c])
    return float(grid[best])


def fit_class_biases(logits: torch.Tensor, labels: torch.Tensor, *, grid: Sequence[float] = DEFAULT_GRID,
                     sweeps: int = 3) -> BiasFit:
    """Per-class offsets maximising mIoU (classes 1..K-1) of ``argmax(logits + offsets)``.

    Coordinate ascent from zero: each sweep sets every class's offset, in turn, to the grid value
    that maximises mIoU with the others held; it stops after ``sweeps`` or when a sweep changes
    nothing. With zero on the grid the result never scores below no offsets.

    Args:
        logits: K×P scores of P pixels, K ≥ 2 (float16 keeps a large set in memory; counted in
            float32). Pixels, not images: the set may mix image sizes.
        labels: P class ids in [0, K) or :data:`IGNORE_INDEX`.
        grid: candidate offsets.
        sweeps: at most this many passes over the classes.

    Raises:
        CalibrationError: mismatched shapes, no labelled pixel, label ids outside [0, K), an
            empty grid or fewer than one sweep.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[1:]:
        raise CalibrationError(f"logits K×P and labels P do not match: {tuple(logits.shape)} vs "
                               f"{tuple(labels.shape)}")
    k = logits.shape[0]
    if k < 2:
        raise CalibrationError(f"calibration needs at least 2 classes, the model has {k}")
    _check_search(grid, sweeps)
    labels = labels.long()
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        raise CalibrationError("the calibration set has no labelled pixel")
    outside = labels[keep & ((labels < 0) | (labels >= k))]
    if outside.numel():
        raise CalibrationError(f"label ids {outside.unique()[:10].tolist()} are outside [0, {k}) "
                               f"(and not the ignore index {IGNORE_INDEX})")
    candidates = torch.tensor(sorted(set(grid)), dtype=torch.float32)
    biases = torch.zeros(k)
    for _ in range(sweeps):
        previous = biases.clone()
        for c in range(k):
            biases[c] = _best_offset_for_class(logits, labels, biases, c, candidates)
        if torch.equal(previous, biases):
            break
    before = confusion_with_biases(logits, labels, torch.zeros(k))
    after = confusion_with_biases(logits, labels, biases)
    return BiasFit(biases=[float(b) for b in biases], miou_before=_miou(before), miou_after=_miou(after),
                   iou_before=_ious(before), iou_after=_ious(after))


def _check_search(grid: Sequence[float], sweeps: int) -> None:
    if len(grid) == 0 or sweeps < 1:
        raise CalibrationError(f"calibration needs a non-empty grid and sweeps >= 1, got {len(grid)} values and "
                               f"{sweeps} sweeps")


def _ious(conf: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in iou_from_confusion(conf.numpy())]


def fold_class_biases(model: nn.Module, biases: Sequence[float], rgb: torch.Tensor, thermal: torch.Tensor) -> str:
    """Add ``biases`` to the bias of the layer whose output the logits are, in place; its name.

    Which layer that is differs by variant (``seg_head.classifier``, MAFS' ``seg_head.head.semantic``
    beside its deep-supervision heads), so each layer with K outputs and a bias is tried with
    distinct trial offsets (1, 2, ..., K: real offsets may all be zero, which any layer passes) and
    kept only when the model's logits for the probe ``rgb``/``thermal`` move by exactly those
    (true of a final 1×1 classifier followed by bilinear resizing, whose weights sum to one).

    Raises:
        CalibrationError: no layer shifts the logits by a constant (the model is left unchanged).
    """
    offsets = torch.as_tensor(list(biases), dtype=torch.float32)
    k = len(offsets)
    trial = torch.arange(1, k + 1, dtype=torch.float32)
    with torch.no_grad():
        reference = forward_full_size(model, rgb, thermal, nullcontext).logits
        if reference is None or reference.shape[1] != k:
            raise CalibrationError(f"the model gives {None if reference is None else reference.shape[1]} class "
                                   f"scores, the offsets are for {k}")
        expected = reference + trial.view(1, k, 1, 1).to(reference.device)
        tolerance = 1e-4 * (1.0 + float(expected.abs().max()))
        for name, layer in model.named_modules():
            out_features = getattr(layer, "out_channels", getattr(layer, "out_features", None))
            bias = getattr(layer, "bias", None)
            if not isinstance(layer, (nn.Conv2d, nn.Linear)) or out_features != k or bias is None:
                continue
            original = bias.detach().clone()
            bias.add_(trial.to(bias))
            shifted = forward_full_size(model, rgb, thermal, nullcontext).logits
            bias.copy_(original)
            if shifted is not None and float((shifted - expected).abs().max()) <= tolerance:
                bias.add_(offsets.to(bias))
                return name
    raise CalibrationError(f"{getattr(model, 'variant', type(model).__name__)}: no layer with {k} outputs and a bias "
                           "shifts the logits by a constant, so the offsets cannot be folded into the weights")


@dataclass
class CalibrationSet:
    """Logits and labels of a calibration dataset's labelled pixels, for :func:`fit_class_biases`.

    Attributes:
        logits: K×P float16 scores of the P labelled pixels.
        labels: P class ids.
        probe: the first image (rgb, thermal), to check the fold with.
        description: the dataset, as the sidecar records it.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    probe: tuple[torch.Tensor, torch.Tensor]
    description: Any


@torch.no_grad()
def collect_logits(model: nn.Module, dataset: Any, device: torch.device, *, progress: bool = False) -> CalibrationSet:
    """Run ``model`` over ``dataset`` at full size and keep the scores of the labelled pixels.

    Each labelled image goes through :func:`~ivf_training.objectives.forward_full_size` (the
    padding ``ivf-train eval`` uses), in float32; images without a labelled pixel are skipped
    unrun. The scores are kept in float16, half the memory (200 scenes of 320×240: 280 MB),
    which the fit counts exactly (its ties follow argmax).

    Raises:
        CalibrationError: the set is empty or has no labelled pixel (naming the set).
    """
    from tqdm import tqdm

    description = describe_dataset(dataset)
    if len(dataset) == 0:
        raise CalibrationError(f"the calibration set {description} is empty")
    scores, truths = [], []
    probe = None
    for index in tqdm(range(len(dataset)), disable=not progress, unit="img", desc="calibration set"):
        sample = dataset[index]
        labels = sample["labels"].to(device).flatten()
        keep = labels != IGNORE_INDEX
        if not bool(keep.any()):
            continue
        rgb, thermal = sample["rgb"][None].to(device), sample["thermal"][None].to(device)
        probe = probe or (rgb, thermal)
        logits = forward_full_size(model, rgb, thermal, nullcontext).logits
        if logits is None:
            raise CalibrationError("the model is fusion-only (no class scores): there is nothing to calibrate")
        scores.append(logits[0].flatten(1)[:, keep].half().cpu())
        truths.append(labels[keep].cpu())
    if probe is None:
        raise CalibrationError(f"the calibration set {description} has no labelled pixel in its {len(dataset)} "
                               "images; calibration needs labels")
    return CalibrationSet(torch.cat(scores, dim=1), torch.cat(truths), probe, description)


@dataclass
class CalibrationResult:
    """What :func:`calibrate_weights` wrote and measured."""

    out: Path
    fit: BiasFit
    layer: str


def calibrate_weights(weights: str | Path, out: str | Path, kind: str, root: str | Path | None = None,
                      split: str | None = None, *, options: Mapping[str, Any] | None = None,
                      max_pairs: int | None = None, device: str = "auto", grid: Sequence[float] = DEFAULT_GRID,
                      sweeps: int = 3, progress: bool = False) -> CalibrationResult:
    """Fit class offsets on a labelled dataset, fold them into ``weights`` and write ``out``.

    The sidecar keeps everything it had except ``quality`` (measured on the uncalibrated model,
    so it is cleared: rerun ``scripts/quality_report.py``) and gains a ``lineage`` record: the
    calibration set, the offsets, the layer they went into, and mIoU before and after on that set.
    ``out`` may be ``weights`` itself: each file is replaced atomically, the sidecar first (a
    crash between the two renames leaves a record of offsets the tensors lack; rerun).

    Args:
        weights: engine weights (``.safetensors`` + sidecar) with a segmentation head.
        out: destination ``.safetensors``.
        kind, root, split, max_pairs, options: the calibration dataset, as for ``ivf-train eval``
            (e.g. ``generated`` with ``options={"config": {"seed": 3}, "count": 200}``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        grid, sweeps: see :func:`fit_class_biases`.
        progress: show a progress bar while collecting the scores.

    Raises:
        WeightsError: the weights cannot be loaded.
        DatasetError: the dataset is missing or its classes do not fit the model.
        CalibrationError: a fusion-only model, a set without labels, or no layer to fold into.
    """
    from ivf_training.build import resolve_device

    weights, out = Path(weights), Path(out)
    if out.suffix != ".safetensors":  # refused before the minute of collecting scores
        raise CalibrationError(f"{out}: engine weights must use the .safetensors suffix")
    _check_search(grid, sweeps)
    model, info = build_model_from_weights(weights, device=resolve_device(device))
    if info.num_classes == 0:
        raise CalibrationError(f"{weights}: fusion-only weights (num_classes 0) have no class scores to calibrate")
    split = split if split is not None else default_split(kind, "val")
    dataset = build_dataset(kind, root, split, num_classes=info.num_classes, max_pairs=max_pairs,
                            **dict(options or {}))
    data = collect_logits(model, dataset, next(model.parameters()).device, progress=progress)
    fit = fit_class_biases(data.logits, data.labels, grid=grid, sweeps=sweeps)
    layer = fold_class_biases(model, fit.biases, *data.probe)
    record = {
        "calibration": "class_bias",
        "command": "ivf-train calibrate",
        "source": weights.name,
        "dataset": {"kind": kind, "split": split, "options": dict(options or {}), "max_pairs": max_pairs,
                    "description": data.description, "labelled_pixels": int(data.labels.numel())},
        "layer": layer,
        "biases": fit.biases,
        "grid": {"min": min(grid), "max": max(grid), "values": len(set(grid))},
        "sweeps": sweeps,
        "mIoU_before": round(fit.miou_before, 4),
        "mIoU_after": round(fit.miou_after, 4),
        "IoU_before": [None if v is None else round(v, 4) for v in fit.iou_before],
        "IoU_after": [None if v is None else round(v, 4) for v in fit.iou_after],
    }
    calibrated = replace(info, quality={}, lineage=[*info.lineage, record])
    written = save_weights({k: v.cpu() for k, v in model.state_dict().items()}, out, calibrated)
    return CalibrationResult(written, fit, layer)


def calibration_scene_seeds(info: WeightsInfo) -> set[int]:
    """The generated-scene seeds that calibrated these weights (their lineage's calibration
    records); a report on held-out seeds must not use them."""
    seeds = set()
    for record in info.lineage:
        description = record.get("dataset", {}).get("description") if record.get("calibration") else None
        if isinstance(description, dict) and description.get("kind") == "generated":
            seed = description.get("scene", {}).get("seed")
            if isinstance(seed, int):
                seeds.add(seed)
    return seeds
