"""The generic layout ``root/vi``, ``root/ir`` and optional ``root/labels``, labelled or not.

Why: the simplest way to bring one's own data (a robot's recordings, LLVIP, RoadScene) is two
folders of images matched by file name; class-id PNGs in ``labels/`` make it labelled. Pairs
are matched by stem (``vi/0001.jpg`` ↔ ``ir/0001.png``), so extensions may differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ivf_perception.io.errors import DatasetError

from .common import PairDataset, Sample
from .listing import NO_THERMAL, NO_VISIBLE, check_root, list_pairs

__all__ = ["FolderPairDataset", "RealPairsDataset"]


class FolderPairDataset(PairDataset):
    """The generic layout ``root/vi``, ``root/ir`` and optional ``root/labels`` (class-id PNGs).

    Pairs are matched by file stem (:func:`~ivf_perception.io.image_files.find_pairs`); unmatched
    files and pairs without labels are logged with counts at construction (pairs without a label
    file are trained as unlabelled: labels 255). See :class:`~.common.PairDataset` for sizes and
    label checks.

    Args:
        root: the folder holding ``vi/`` and ``ir/``.
        num_classes: number of classes to check label ids against (``None``: no check).
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use only the first pairs (sorted by stem).
        labels: read ``labels/`` when present; ``False`` makes every sample unlabelled.
        name_prefix: prepended to sample names (tells folders apart in a mix).
    """

    kind = "folder"
    title = "folder"

    def __init__(self, root: str | os.PathLike[str], *, num_classes: int | None = None,
                 short_side: int | None = None, max_pairs: int | None = None, labels: bool = True,
                 name_prefix: str = "") -> None:
        root_path = check_root(Path(root))
        labels_dir = root_path / "labels"
        listing = list_pairs(root_path / "vi", root_path / "ir", labels_dir if labels and labels_dir.is_dir() else None,
                             labels_required=False, name_prefix=name_prefix)
        self._missing_vi = len(listing.problems.get(NO_VISIBLE, []))
        self._missing_ir = len(listing.problems.get(NO_THERMAL, []))
        super().__init__(listing, root=root_path, split=None, num_classes=num_classes, short_side=short_side,
                         max_pairs=max_pairs)

    @property
    def where(self) -> str:
        """The root alone: the folder is the whole dataset."""
        return str(self.root)

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        return {"kind": "folder", **self.folder_counts()}

    def folder_counts(self) -> dict[str, Any]:
        """Root, usable pairs, labelled pairs and unmatched files of each side."""
        return {
            "root": str(self.root),
            "pairs": len(self),
            "labelled": sum(f.labels is not None for f in self.files),
            "missing_vi": self._missing_vi,
            "missing_ir": self._missing_ir,
        }


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
            FolderPairDataset(d, short_side=short_side, max_pairs=max_pairs, labels=False,
                              name_prefix=f"{Path(d).name}/")
            for d in dirs
        ]
        self._index = [(f, i) for f in self.folders for i in range(len(f))]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Sample:
        folder, i = self._index[index]
        return folder[i]

    def describe(self) -> dict[str, Any]:
        """What the sidecar records about this dataset."""
        return {"kind": "real_pairs", "folders": [f.folder_counts() for f in self.folders], "pairs": len(self)}
