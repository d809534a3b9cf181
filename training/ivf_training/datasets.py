"""Training/validation datasets, the training mix, and a resumable data order.

Every dataset returns the same sample dict so they can be mixed in one ``ConcatDataset``:

``{"rgb": (3, H, W) float [0, 1], "thermal": (1, H, W) float [0, 1],
"labels": (H, W) int64 with 255 = ignore, "name": str}``

Unlabelled pairs carry labels filled with 255 (instead of no ``labels`` key) so a batch may mix
labelled generated scenes with unlabelled real pairs: the cross-entropy simply ignores those
pixels, and the fusion losses use every pixel.

Data order and augmentation are functions of (seed, epoch, index) only
(:class:`ResumableBatchSampler`, :class:`AugmentedDataset`), so a run resumed at step N sees
exactly the batches an uninterrupted run would have seen, with any number of workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import IMAGE_EXTENSIONS, find_pairs, read_image, read_rgb, read_thermal

from ivf_training.augment import IGNORE_INDEX, JointAugment

__all__ = [
    "Sample",
    "FolderPairDataset",
    "RealPairsDataset",
    "GeneratedScenesDataset",
    "AugmentedDataset",
    "ResumableBatchSampler",
    "build_mix",
    "describe_dataset",
]

_log = logging.getLogger(__name__)

Sample = dict[str, Any]


def _to_sample(rgb: np.ndarray, thermal: np.ndarray, labels: np.ndarray | None, name: str) -> Sample:
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


def _resize_short_side(image: np.ndarray, short_side: int, interpolation: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interpolation)


def _sample_names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


class _PairFolder:
    """One ``vi/`` + ``ir/`` (+ optional ``labels/``) folder: listing, reporting and reading."""

    def __init__(self, root: Path, *, labels_dir: str | None, num_classes: int | None,
                 short_side: int | None, max_pairs: int | None) -> None:
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"dataset folder {root} does not exist (relative paths are resolved against the "
                f"current directory {Path.cwd()}; run from the project root or give an absolute path)"
            )
        self.root = root
        self.num_classes = num_classes
        self.short_side = short_side
        listing = find_pairs(root / "ir", root / "vi")
        self.pairs = listing.pairs[:max_pairs] if max_pairs is not None else listing.pairs
        self.missing_vi = listing.missing_vi
        self.missing_ir = listing.missing_ir
        self.labels: dict[str, Path] = {}
        self.missing_labels: list[str] = []
        if labels_dir is not None and (root / labels_dir).is_dir():
            for entry in sorted((root / labels_dir).iterdir()):
                if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
                    self.labels[entry.stem] = entry
            self.missing_labels = [p.stem for p in self.pairs if p.stem not in self.labels]
        self._warned_size: set[str] = set()
        self._report()

    @property
    def labelled(self) -> bool:
        return bool(self.labels)

    def _report(self) -> None:
        """List unmatched files with counts before training starts, not hours into it."""
        if self.missing_ir:
            _log.warning("%s: %d visible images have no thermal counterpart (skipped): %s",
                         self.root, len(self.missing_ir), _sample_names(self.missing_ir))
        if self.missing_vi:
            _log.warning("%s: %d thermal images have no visible counterpart (skipped): %s",
                         self.root, len(self.missing_vi), _sample_names(self.missing_vi))
        if self.missing_labels:
            _log.warning("%s: %d pairs have no label file (trained as unlabelled, labels 255): %s",
                         self.root, len(self.missing_labels), _sample_names(self.missing_labels))

    def read(self, index: int, name_prefix: str = "") -> Sample:
        pair = self.pairs[index]
        rgb = read_rgb(pair.vi_path)
        thermal = read_thermal(pair.ir_path)
        h, w = rgb.shape[:2]
        if thermal.shape != (h, w):
            if pair.stem not in self._warned_size:
                self._warned_size.add(pair.stem)
                _log.warning("%s: thermal %dx%d differs from visible %dx%d; resizing thermal to the visible size",
                             pair.ir_path, thermal.shape[1], thermal.shape[0], w, h)
            shrink = thermal.shape[0] > h or thermal.shape[1] > w
            thermal = cv2.resize(thermal, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        labels = None
        label_path = self.labels.get(pair.stem)
        if label_path is not None:
            labels = self._read_labels(label_path, (h, w))
        if self.short_side is not None:
            rgb = _resize_short_side(rgb, self.short_side, cv2.INTER_AREA)
            thermal = _resize_short_side(thermal, self.short_side, cv2.INTER_AREA)
            if labels is not None:
                labels = _resize_short_side(labels, self.short_side, cv2.INTER_NEAREST)
        return _to_sample(rgb, thermal, labels, f"{name_prefix}{pair.stem}")

    def _read_labels(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        labels = read_image(path)
        if labels.ndim == 3:
            if labels.shape[2] >= 3 and np.array_equal(labels[..., 0], labels[..., 1]) and np.array_equal(
                labels[..., 1], labels[..., 2]
            ):
                labels = labels[..., 0]
            else:
                raise DatasetError(
                    f"{path}: label images must hold one class id per pixel (single channel), got "
                    f"{labels.shape[2]} differing channels (a colour visualisation?)"
                )
        if labels.dtype not in (np.uint8, np.uint16):
            raise DatasetError(f"{path}: label images must be 8- or 16-bit integers, got {labels.dtype}")
        if labels.shape != size:
            raise DatasetError(
                f"{path}: labels are {labels.shape[1]}x{labels.shape[0]} but the visible image is "
                f"{size[1]}x{size[0]}; labels must match the visible image pixel for pixel"
            )
        if self.num_classes is not None:
            ids = np.unique(labels)
            bad = [int(i) for i in ids if i >= self.num_classes and i != IGNORE_INDEX]
            if bad:
                raise DatasetError(
                    f"{path}: class ids {bad} are out of range for {self.num_classes} classes "
                    f"(valid: 0..{self.num_classes - 1} and {IGNORE_INDEX} = ignore)"
                )
        return labels

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "pairs": len(self.pairs),
            "labelled": len(self.pairs) - len(self.missing_labels) if self.labelled else 0,
            "missing_vi": len(self.missing_vi),
            "missing_ir": len(self.missing_ir),
        }


class FolderPairDataset(Dataset):
    """The generic layout ``root/vi``, ``root/ir`` and optional ``root/labels`` (class-id PNGs).

    Pairs are matched by file stem (:func:`~ivf_perception.io.image_files.find_pairs`);
    unmatched files and pairs without labels are logged with counts at construction. A thermal
    image whose size differs from its visible image is resized to it (with a warning); labels
    of another size, or with class ids outside ``0..num_classes-1`` (255 allowed), are errors
    naming the file.

    Args:
        root: the folder holding ``vi/`` and ``ir/``.
        num_classes: number of classes to check label ids against (``None``: no check).
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use only the first pairs (sorted by stem).
    """

    def __init__(self, root: str | os.PathLike[str], *, num_classes: int | None = None,
                 short_side: int | None = None, max_pairs: int | None = None) -> None:
        self.folder = _PairFolder(Path(root), labels_dir="labels", num_classes=num_classes,
                                  short_side=short_side, max_pairs=max_pairs)

    def __len__(self) -> int:
        return len(self.folder.pairs)

    def __getitem__(self, index: int) -> Sample:
        return self.folder.read(index)

    @property
    def labelled(self) -> bool:
        """Whether a ``labels/`` folder with at least one label file exists."""
        return self.folder.labelled

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        return {"kind": "folder", **self.folder.describe()}


class RealPairsDataset(Dataset):
    """Unlabelled real pairs from one or more folders with ``vi/`` and ``ir/`` (LLVIP, ...).

    Labels are filled with 255, so the segmentation loss ignores these samples while the fusion
    losses train on them. Names are ``<folder>/<stem>`` so pairs from different folders stay
    distinguishable in logs.

    Args:
        dirs: folders, each with ``vi/`` and ``ir/``.
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use at most this many pairs per folder.
    """

    def __init__(self, dirs: Sequence[str | os.PathLike[str]], *, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        if not dirs:
            raise DatasetError("RealPairsDataset needs at least one folder")
        self.folders = [
            _PairFolder(Path(d), labels_dir=None, num_classes=None, short_side=short_side, max_pairs=max_pairs)
            for d in dirs
        ]
        self._index = [(f, i) for f in self.folders for i in range(len(f.pairs))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Sample:
        folder, i = self._index[index]
        return folder.read(i, name_prefix=f"{folder.root.name}/")

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        return {"kind": "real_pairs", "folders": [f.describe() for f in self.folders], "pairs": len(self)}


class GeneratedScenesDataset(Dataset):
    """Scenes generated on the fly by :func:`ivf_perception.io.synthetic.generate_scene`.

    Scene ``i`` of the dataset is ``generate_scene(start + i, config)``: deterministic, so the
    same indices always give the same scenes and disjoint index ranges give disjoint sets.

    Args:
        count: number of scenes.
        config: a ``SceneConfig``, a mapping of its fields, or ``None`` for the defaults.
        start: index of the first scene.
    """

    def __init__(self, count: int, config: Any = None, start: int = 0) -> None:
        from ivf_perception.io.synthetic import SceneConfig

        if count < 1:
            raise DatasetError(f"GeneratedScenesDataset needs count >= 1, got {count}")
        if config is None:
            config = SceneConfig()
        elif not isinstance(config, SceneConfig):
            try:
                config = SceneConfig(**dict(config))
            except TypeError as exc:
                raise DatasetError(f"invalid generated scene settings {dict(config)}: {exc}") from exc
        self.count = count
        self.config = config
        self.start = start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        from ivf_perception.io.synthetic import generate_scene

        if not 0 <= index < self.count:
            raise IndexError(f"scene index {index} out of range for {self.count} scenes")
        scene = generate_scene(self.start + index, self.config)
        return _to_sample(scene.rgb, scene.thermal, scene.labels, f"scene_{self.start + index:07d}")

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        from dataclasses import asdict, is_dataclass

        cfg = asdict(self.config) if is_dataclass(self.config) else repr(self.config)
        return {"kind": "generated", "count": self.count, "start": self.start, "scene": cfg}


class _Repeat(Dataset):
    """A dataset repeated ``times`` (so small real sets weigh more in the mix)."""

    def __init__(self, base: Dataset, times: int) -> None:
        self.base = base
        self.times = times

    def __len__(self) -> int:
        return len(self.base) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return self.base[index % len(self.base)]  # type: ignore[arg-type]


def describe_dataset(dataset: Dataset) -> Any:
    """A JSON-able description of a dataset or mix (kinds, roots, counts, repeats)."""
    if isinstance(dataset, ConcatDataset):
        return {"kind": "mix", "samples": len(dataset), "parts": [describe_dataset(d) for d in dataset.datasets]}
    if isinstance(dataset, _Repeat):
        return {**describe_dataset(dataset.base), "repeat": dataset.times}
    if isinstance(dataset, AugmentedDataset):
        return describe_dataset(dataset.base)
    describe = getattr(dataset, "describe", None)
    return describe() if describe is not None else {"kind": type(dataset).__name__, "samples": len(dataset)}  # type: ignore[arg-type]


def build_mix(parts: Sequence[tuple[Dataset, int]]) -> Dataset:
    """Concatenate datasets, each repeated the given number of times."""
    if not parts:
        raise DatasetError("no datasets to mix")
    wrapped = [d if times == 1 else _Repeat(d, times) for d, times in parts]
    return wrapped[0] if len(wrapped) == 1 else ConcatDataset(wrapped)


class AugmentedDataset(Dataset):
    """Applies :class:`~ivf_training.augment.JointAugment` with a per-sample seeded generator.

    The generator of sample ``index`` in epoch ``epoch`` is seeded from ``(seed, epoch, index)``
    through numpy's ``SeedSequence`` (well-mixed, no collisions between nearby triples), so the
    augmentation does not depend on worker processes or on the order samples are drawn in.
    Call :meth:`set_epoch` before each epoch (DataLoader workers get a fresh copy per epoch).
    """

    def __init__(self, base: Dataset, augment: JointAugment, seed: int) -> None:
        self.base = base
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return self.augment(self.base[index], generator)


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled fixed-size batches whose order is a function of (seed, epoch).

    ``set_epoch(epoch, skip_batches)`` makes the next iteration yield that epoch's batches from
    ``skip_batches`` on: a resumed run continues mid-epoch with the batches it would have seen.
    The last incomplete batch is dropped (crops are equal-sized, but BatchNorm-style layers and
    the learning-rate schedule expect full batches).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < batch_size:
            raise DatasetError(
                f"the training set has {num_samples} samples, fewer than batch_size {batch_size}; "
                "add data or lower batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}], got {skip_batches}")
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        state = np.random.SeedSequence([self.seed, self.epoch, 0x5A17]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.skip_batches, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]
