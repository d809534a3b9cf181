"""What every file-based loader shares: the sample dict, reading, and the label checks.

Why one base: the layouts (MFNet's split files, the split folders of MSRS, PST900 and FMB, the
generic ``vi/ir/labels`` folder, the output of ``ivf-perception extract``) differ only in *where*
the files are. Listing them is each layout module's job (with :mod:`.listing`); reading the
images, checking labels against the class table and converting to tensors happens once, here, so
every loader fails in the same clear way.

Every dataset returns the same sample dict, so datasets can be mixed in one ``ConcatDataset``::

    {"rgb": (3, H, W) float [0, 1], "thermal": (1, H, W) float [0, 1],
     "labels": (H, W) int64 with 255 = ignore, "name": str}

Unlabelled samples carry labels filled with 255 (instead of no ``labels`` key), so a batch may
mix labelled and unlabelled pairs: the cross-entropy ignores those pixels and the fusion losses
use every pixel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ivf_perception.io.classes import ClassTable
from ivf_perception.io.errors import DatasetError, IVFIOError
from ivf_perception.io.image_files import read_image, read_rgb, read_thermal
from ivf_training.augment import IGNORE_INDEX

from .listing import Listing, SampleFiles, report_listing

__all__ = ["Sample", "LabelStats", "PairDataset", "to_sample", "resize_short_side", "label_histogram"]

_log = logging.getLogger("ivf_training.datasets")

Sample = dict[str, Any]

_SHOWN_BAD_FILES = 10


def to_sample(rgb: np.ndarray, thermal: np.ndarray, labels: np.ndarray | None, name: str) -> Sample:
    """uint8 RGB (H, W, 3), thermal (H, W) uint8 or float in [0, 1], labels (H, W) → tensors."""
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    if thermal.dtype == np.uint8:
        th_t = torch.from_numpy(np.ascontiguousarray(thermal)).float().div_(255.0)[None]
    else:
        th_t = torch.from_numpy(np.ascontiguousarray(thermal, dtype=np.float32))[None].clamp_(0.0, 1.0)
    if labels is None:
        lab_t = torch.full(rgb.shape[:2], IGNORE_INDEX, dtype=torch.int64)
    else:
        lab_t = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    return {"rgb": rgb_t, "thermal": th_t, "labels": lab_t, "name": name}


def resize_short_side(image: np.ndarray, short_side: int, interpolation: int) -> np.ndarray:
    """Resize so the shorter side has ``short_side`` pixels, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def label_histogram(labels: np.ndarray) -> np.ndarray:
    """Pixel count per label value (index = value), at least 256 entries."""
    return np.bincount(labels.ravel(), minlength=IGNORE_INDEX + 1)


def _out_of_range(histogram: np.ndarray, num_classes: int) -> list[int]:
    ids = np.flatnonzero(histogram)
    return [int(i) for i in ids if i >= num_classes and i != IGNORE_INDEX]


@dataclass(frozen=True)
class LabelStats:
    """What :meth:`PairDataset.scan_labels` found in the label files.

    Attributes:
        files: label files read.
        class_pixels: pixel count per class id (length: the class table's size, or the largest
            id + 1 when the dataset has no table).
        ignore_pixels: pixels labelled 255.
    """

    files: int
    class_pixels: list[int]
    ignore_pixels: int


class PairDataset(Dataset):
    """Reads the samples of a :class:`Listing`: the base of every file-based loader.

    Problems of the listing are logged with counts at construction, before training starts; a
    listing without usable samples is an error. A thermal image whose size differs from its
    visible image is resized to it (with a warning, once per sample); labels of another size or
    with class ids outside ``0..num_classes-1`` (255 allowed) are errors naming the file.
    :meth:`scan_labels` checks every label file at once (``build_dataset`` calls it).

    Args:
        listing: the samples and the problems found by the layout module.
        root: the dataset folder (for messages and :meth:`describe`).
        split: the split read (``None`` where the layout has none).
        num_classes: number of classes label ids are checked against (``None``: no check);
            defaults to the size of ``class_table``.
        class_table: the dataset's class names and palette, where it has a fixed table.
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use only the first samples of the listing.
    """

    kind: ClassVar[str] = "pairs"
    title: ClassVar[str] = "dataset"

    def __init__(self, listing: Listing, *, root: Path, split: str | None, num_classes: int | None = None,
                 class_table: ClassTable | None = None, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        self.root = root
        self.split = split
        self.class_table = class_table
        if num_classes is None and class_table is not None:
            num_classes = len(class_table)
        self.num_classes = num_classes
        self.short_side = short_side
        report_listing(self.where, listing)
        self.listing = listing
        self.files = listing.samples[:max_pairs] if max_pairs is not None else listing.samples
        self.label_stats: LabelStats | None = None
        self._warned_size: set[str] = set()

    @property
    def where(self) -> str:
        """How messages name this dataset: title, root and split."""
        return f"{self.title} {self.root}" + (f" [{self.split}]" if self.split else "")

    @property
    def labelled(self) -> bool:
        """Whether at least one sample has a label file."""
        return any(f.labels is not None for f in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        files = self.files[index]
        rgb, thermal = self.read_images(files)
        h, w = rgb.shape[:2]
        if thermal.shape != (h, w):
            if files.name not in self._warned_size:
                self._warned_size.add(files.name)
                _log.warning("%s: thermal %dx%d differs from visible %dx%d; resizing thermal to the visible size",
                             files.thermal, thermal.shape[1], thermal.shape[0], w, h)
            shrink = thermal.shape[0] > h or thermal.shape[1] > w
            thermal = cv2.resize(thermal, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        labels = None
        if files.labels is not None:
            labels = self._checked_labels(files.labels)
            if labels.shape != (h, w):
                raise DatasetError(
                    f"{files.labels}: labels are {labels.shape[1]}x{labels.shape[0]} but the visible image is "
                    f"{w}x{h}; labels must match the visible image pixel for pixel"
                )
        if self.short_side is not None:
            rgb = resize_short_side(rgb, self.short_side, cv2.INTER_AREA)
            thermal = resize_short_side(thermal, self.short_side, cv2.INTER_AREA)
            if labels is not None:
                labels = resize_short_side(labels, self.short_side, cv2.INTER_NEAREST)
        return to_sample(rgb, thermal, labels, files.name)

    def read_images(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, thermal)``: ``(H, W, 3)`` uint8 and ``(H, W)`` float32 in [0, 1].

        8-bit and 16-bit thermal (raw counts through percentile AGC) are both handled by
        :func:`~ivf_perception.io.image_files.read_thermal`.
        """
        if files.thermal is None:
            raise DatasetError(f"{self.where}: sample {files.name} has no thermal file")
        return read_rgb(files.rgb), read_thermal(files.thermal)

    def _checked_labels(self, path: Path) -> np.ndarray:
        """Read a class-id image; single channel, 8/16-bit, ids in the class table (or 255)."""
        labels = read_image(path)
        if labels.ndim == 3:
            if labels.shape[2] >= 3 and np.array_equal(labels[..., 0], labels[..., 1]) and np.array_equal(
                labels[..., 1], labels[..., 2]
            ):
                labels = labels[..., 0]
            else:
                raise DatasetError(
                    f"{path}: label images must hold one class id per pixel (single channel), got "
                    f"{labels.shape[2]} differing channels (a colour visualisation? use the class-id folder)"
                )
        if labels.dtype not in (np.uint8, np.uint16):
            raise DatasetError(f"{path}: label images must be 8- or 16-bit integers, got {labels.dtype}")
        if self.num_classes is not None:
            bad = _out_of_range(label_histogram(labels), self.num_classes)
            if bad:
                raise DatasetError(f"{path}: class ids {bad} are out of range for {self._table_text()}")
        return labels

    def _table_text(self) -> str:
        """``9 classes (MFNet: 0 unlabelled .. 8 bump; 255 = ignore)``-style description."""
        n = self.num_classes
        if self.class_table is not None:
            names = self.class_table.classes
            span = f"0 {names[0]} .. {n - 1} {names[-1]}"
            return f"{n} classes ({self.class_table.name}: {span}; {IGNORE_INDEX} = ignore)"
        return f"{n} classes (valid: 0..{n - 1} and {IGNORE_INDEX} = ignore)"

    def scan_labels(self) -> LabelStats:
        """Read every label file once: check it and count pixels per class.

        Done before training so a bad file stops the run at start-up with the full list, not
        hours in with the first one met. The counts go into :meth:`describe` (``data.json``).

        Raises:
            DatasetError: label files that cannot be read, are not class-id images, or hold ids
                outside the class table; the message names the files (the first 10) and their ids.
        """
        total = np.zeros(IGNORE_INDEX + 1, np.int64)
        bad: list[str] = []
        files = [f.labels for f in self.files if f.labels is not None]
        for path in files:
            try:
                labels = self._checked_labels(path)
            except IVFIOError as exc:
                bad.append(str(exc))
                continue
            histogram = label_histogram(labels)
            if histogram.size > total.size:
                total = np.pad(total, (0, histogram.size - total.size))
            total[: histogram.size] += histogram
        if bad:
            shown = "; ".join(bad[:_SHOWN_BAD_FILES]) + ("; ..." if len(bad) > _SHOWN_BAD_FILES else "")
            raise DatasetError(f"{self.where}: {len(bad)} of {len(files)} label files are unusable: {shown}")
        ignore = int(total[IGNORE_INDEX])
        total[IGNORE_INDEX] = 0
        used = np.flatnonzero(total)
        size = self.num_classes if self.num_classes is not None else (int(used[-1]) + 1 if used.size else 0)
        self.label_stats = LabelStats(len(files), [int(c) for c in total[:size]], ignore)
        return self.label_stats

    def describe(self) -> dict[str, Any]:
        """What the run's ``data.json`` records: kind, root, split, counts, skipped files, class pixels."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "root": str(self.root),
            "split": self.split,
            "samples": len(self),
            "labelled": sum(f.labels is not None for f in self.files),
            "skipped": {reason: len(names) for reason, names in self.listing.problems.items()},
        }
        if self.class_table is not None:
            out["classes"] = list(self.class_table.classes)
        if self.label_stats is not None:
            out["class_pixels"] = self.label_stats.class_pixels
            out["ignore_pixels"] = self.label_stats.ignore_pixels
        return out
