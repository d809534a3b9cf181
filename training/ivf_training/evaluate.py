"""``ivf-train eval``: full-size evaluation of a trained model on a dataset.

::

    ivf-train eval CHECKPOINT --dataset KIND [--root DIR] [--split S] [--out FILE.json]

``CHECKPOINT`` is engine weights (``.safetensors`` + sidecar), a run directory (its ``best``, else
``last``) or a checkpoint file in a run's ``ckpt/``. The dataset is built by
:func:`~ivf_training.datasets.build_dataset` (files listed, labels checked against the class
table), and the metrics come from :func:`~ivf_training.validation.validate_model`, the code the
trainer validates with: mIoU and the per-class IoU from one confusion matrix over the set, and
all eleven fusion metrics (training validates with seven; VIF is the slow one). No loss is
computed (it may need files, such as a teacher, that an evaluation machine lacks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ivf_perception.engine import Engine
from ivf_perception.engine.weights import WeightsInfo
from ivf_training.datasets import build_dataset, default_split, describe_dataset
from ivf_training.export import load_run_weights
from ivf_training.validation import FUSION_EVAL_METRICS, SEG_VAL_METRICS, forward_full_size, validate_model

__all__ = ["EvalResult", "evaluate", "default_output_path", "format_table", "write_report"]

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalResult:
    """What ``ivf-train eval`` prints and writes.

    Attributes:
        metrics: ``mIoU`` & co., ``IoU/<class>`` and ``fusion/<metric>`` (None: undefined).
        report: the JSON document: source, model, dataset, precision and ``metrics``.
    """

    metrics: dict[str, float | None]
    report: dict[str, Any]


def _is_run_checkpoint(path: Path) -> bool:
    """A file in a run directory's ``ckpt/`` (a training checkpoint, not engine weights)."""
    return path.parent.name == "ckpt" and (path.parent.parent / "config.yaml").is_file()


def _load(source: Path, checkpoint: str | None, device: str, precision: str) -> tuple[Engine, WeightsInfo, Path]:
    """The model on its device (through the Engine, which owns device and eval mode), what its
    sidecar records, and the file its weights came from."""
    if source.is_file() and not _is_run_checkpoint(source):
        engine = Engine("auto", weights=source, device=device, precision=precision)
        return engine, cast(WeightsInfo, engine.info), source  # set whenever weights are loaded
    run = load_run_weights(source, checkpoint=checkpoint)
    return Engine(run.model, device=device, precision=precision), run.info, run.model_file


def evaluate(source: str | Path, kind: str, root: str | Path | None = None, split: str | None = None, *,
             checkpoint: str | None = None, device: str = "auto", precision: str = "fp32",
             short_side: int | None = None, max_pairs: int | None = None, num_workers: int = 0,
             options: Mapping[str, Any] | None = None, progress: bool = False) -> EvalResult:
    """Evaluate ``source`` on dataset ``kind`` at ``root`` (split ``split``) at full size.

    Args:
        source: engine weights, a run directory or a checkpoint file in its ``ckpt/``.
        kind: a dataset kind of :func:`~ivf_training.datasets.build_dataset`.
        root: the dataset folder (not used by ``generated``).
        split: default: the split training validates on (MFNet ``val``; MSRS, PST900, FMB ``test``).
        checkpoint: ``best``, ``last`` or ``prev`` for a run directory.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA only).
        short_side, max_pairs: as in :func:`~ivf_training.datasets.build_dataset`.
        num_workers: DataLoader workers.
        options: loader-specific arguments (``thermal`` for PST900; ``count``, ``start``,
            ``config`` for ``generated``).
        progress: show a progress bar.

    Raises:
        WeightsError, CheckpointError, ConfigError: the model cannot be loaded.
        DatasetError: the dataset is missing, incomplete, or its classes do not fit the model.
    """
    source = Path(source)
    engine, info, weights_file = _load(source, checkpoint, device, precision)
    model: nn.Module = engine.model
    split = split if split is not None else default_split(kind, "val")
    dataset = build_dataset(kind, root, split, num_classes=info.num_classes or None, short_side=short_side,
                            max_pairs=max_pairs, **dict(options or {}))
    amp_dtype = _AMP[precision]

    def autocast() -> torch.autocast:
        return torch.autocast(engine.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def step(rgb: torch.Tensor, thermal: torch.Tensor, labels: torch.Tensor | None,
             index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        return forward_full_size(model, rgb, thermal, autocast), {}

    start = time.perf_counter()
    metrics = validate_model(step, dataset, modules=(model,), device=engine.device, num_classes=info.num_classes,
                             class_names=info.classes if info.num_classes else [], fusion_metrics=FUSION_EVAL_METRICS,
                             num_workers=num_workers, progress=progress)
    report = {
        "source": str(source),
        "weights": str(weights_file),
        "model": {"variant": info.variant, "preset": info.preset, "num_classes": info.num_classes,
                  "model_args": dict(info.model_args)},
        "dataset": {"kind": kind, "root": None if root is None else str(Path(root).resolve()), "split": split,
                    "short_side": short_side, "options": dict(options or {}), "images": len(dataset),
                    "description": describe_dataset(dataset)},
        "device": str(engine.device),
        "precision": precision,
        "seconds": round(time.perf_counter() - start, 3),
        "metrics": metrics,
    }
    return EvalResult(metrics, report)


def default_output_path(source: str | Path, kind: str, split: str | None) -> Path:
    """Where the JSON goes without ``--out``: ``RUN_DIR/eval/<kind>-<split>.json`` for runs,
    ``./<weights stem>.eval-<kind>-<split>.json`` for engine weights (never next to shipped
    weights inside the package)."""
    source = Path(source)
    name = f"{kind}-{split}" if split else kind
    if source.is_dir():
        return source / "eval" / f"{name}.json"
    if _is_run_checkpoint(source):
        return source.parent.parent / "eval" / f"{source.stem}-{name}.json"
    return Path.cwd() / f"{source.stem}.eval-{name}.json"


def format_table(metrics: Mapping[str, float | None], title: str) -> str:
    """A Markdown table of the summary scores, the per-class IoU and the fusion metrics."""
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [title, "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {fmt(metrics[k])} |" for k in SEG_VAL_METRICS if k in metrics]
    lines += [f"| IoU {k[4:]} | {fmt(v)} |" for k, v in metrics.items() if k.startswith("IoU/")]
    lines += [f"| {k[7:]} | {fmt(v)} |" for k, v in metrics.items() if k.startswith("fusion/")]
    return "\n".join(lines)


def write_report(result: EvalResult, path: Path) -> Path:
    """Write the JSON report (atomically), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.report, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path
