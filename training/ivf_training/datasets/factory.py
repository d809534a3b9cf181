"""``build_dataset(kind, root, split, ...)``: from a recipe's data section to a checked loader.

Why one factory: the trainer, the evaluation command and users' scripts name datasets the same
way (a kind, a folder, a split), and every dataset built this way has had its files listed and
its label files checked against its class table before the first training step.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from ivf_perception.io.errors import DatasetError

from .common import PairDataset
from .extracted import ExtractedDataset
from .fmb import FMBDataset
from .folder import FolderPairDataset
from .generated import GeneratedScenesDataset
from .mfnet import MFNetDataset
from .msrs import MSRSDataset
from .pst900 import PST900Dataset

__all__ = ["DATASET_KINDS", "build_dataset", "default_split"]

DATASET_KINDS: dict[str, type[Dataset]] = {
    "folder": FolderPairDataset,
    "extract": ExtractedDataset,
    "mfnet": MFNetDataset,
    "msrs": MSRSDataset,
    "pst900": PST900Dataset,
    "fmb": FMBDataset,
    "generated": GeneratedScenesDataset,
}
"""Dataset kinds by name (the ``kind`` of :func:`build_dataset` and of ``data.kind`` in recipes)."""

# (training split, validation split) of the benchmarks; MSRS, PST900 and FMB ship no validation
# split, and their papers validate on the test split.
_BENCHMARK_SPLITS: dict[str, tuple[str, str]] = {
    "mfnet": ("train", "val"),
    "msrs": ("train", "test"),
    "pst900": ("train", "test"),
    "fmb": ("train", "test"),
}
# Arguments build_dataset passes itself; everything else a loader accepts is an option.
_COMMON_ARGS = {"self", "root", "split", "num_classes", "short_side", "max_pairs"}


def default_split(kind: str, purpose: Literal["train", "val"]) -> str | None:
    """The split a benchmark uses for training or validation; ``None`` for folder kinds (the root itself)."""
    splits = _BENCHMARK_SPLITS.get(kind)
    if splits is None:
        return None
    return splits[0] if purpose == "train" else splits[1]


def _loader(kind: str) -> type[Dataset]:
    try:
        return DATASET_KINDS[kind]
    except KeyError:
        raise DatasetError(f"unknown dataset kind {kind!r}; supported kinds: {', '.join(DATASET_KINDS)}") from None


def _check_options(kind: str, cls: type[Dataset], options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in _COMMON_ARGS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"unknown option(s) {', '.join(unknown)} for dataset kind {kind!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )


def build_dataset(kind: str, root: str | os.PathLike[str] | None = None, split: str | None = None, *,
                  num_classes: int | None = None, short_side: int | None = None, max_pairs: int | None = None,
                  check_labels: bool = True, **options: Any) -> Dataset:
    """Build the loader of ``kind`` for ``root`` and ``split``, listing and checking its files.

    Args:
        kind: one of :data:`DATASET_KINDS`.
        root: the dataset folder (not used by ``generated``).
        split: benchmarks: a split (MFNet: a split file name; MSRS, PST900, FMB: a split folder),
            default ``train``; ``folder`` and ``extract``: an optional subfolder of ``root``.
        num_classes: the model's number of classes. Benchmarks must match their class table
            (an error otherwise); folder kinds check label ids against it (``None``: no check).
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use only the first samples.
        check_labels: read every label file now (:meth:`~.common.PairDataset.scan_labels`), so bad
            ids stop the run before training starts; the class pixel counts go to ``describe()``.
        **options: loader-specific arguments, e.g. ``thermal="thermal_raw"`` for PST900 or
            ``count``/``start``/``config`` for ``generated``.

    Raises:
        DatasetError: unknown kind or option, missing folders, no usable sample, a class-count
            mismatch, or label files with ids outside the class table (naming files and ids).
    """
    cls = _loader(kind)
    _check_options(kind, cls, options)
    if kind == "generated":
        if root is not None or split is not None:
            raise DatasetError("generated scenes have no root or split; pass count=, start= and config= instead")
        return GeneratedScenesDataset(**options)
    if root is None:
        raise DatasetError(f"dataset kind {kind!r} needs a root folder")
    dataset: PairDataset
    if kind in _BENCHMARK_SPLITS:
        dataset = cls(root, split or _BENCHMARK_SPLITS[kind][0], short_side=short_side, max_pairs=max_pairs,
                      **options)  # type: ignore[call-arg]
        if num_classes is not None and num_classes != dataset.num_classes:
            table = dataset.class_table
            names = ", ".join(table.classes) if table is not None else ""
            raise DatasetError(
                f"{dataset.where}: the labels have {dataset.num_classes} classes ({names}) but num_classes="
                f"{num_classes} was requested; train with {dataset.num_classes} classes (recipe: model.num_classes)"
            )
    else:
        folder = Path(root) / split if split else Path(root)
        dataset = cls(folder, num_classes=num_classes, short_side=short_side, max_pairs=max_pairs,
                      **options)  # type: ignore[call-arg]
    if check_labels:
        dataset.scan_labels()
    return dataset
