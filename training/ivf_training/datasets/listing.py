"""Finding a layout's files and reporting, with counts, what is missing or unmatched.

Why separate from reading: each layout module only says where its files are; turning folders,
split files or an index into a :class:`Listing` (usable samples plus skipped names by reason)
and reporting it the same way for every dataset lives here, so missing files are always listed
before training starts and an empty result is always an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import find_pairs, index_images

__all__ = [
    "NO_THERMAL",
    "NO_VISIBLE",
    "SampleFiles",
    "Listing",
    "report_listing",
    "sample_names",
    "check_root",
    "split_folder",
    "index_images",
    "list_pairs",
]

_log = logging.getLogger("ivf_training.datasets")

NO_THERMAL = "visible images have no thermal counterpart (skipped)"
NO_VISIBLE = "thermal images have no visible counterpart (skipped)"


def sample_names(names: Sequence[str], limit: int = 5) -> str:
    """The first few names, and how many there are in all when some are left out."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample.

    ``thermal`` is ``None`` where the layout packs thermal into the ``rgb`` file (MFNet's
    4-channel PNG; that loader overrides :meth:`.common.PairDataset.read_images`). ``labels`` is ``None``
    for an unlabelled sample (all pixels 255).
    """

    name: str
    rgb: Path
    thermal: Path | None
    labels: Path | None


@dataclass
class Listing:
    """What a layout scan found: the usable samples, and what was left out or noticed.

    Attributes:
        samples: usable samples, in the dataset's order.
        problems: reason → names, e.g. ``"visible images have no thermal counterpart
            (skipped)": ["0003", ...]``; reported with counts before training starts.
        notes: problems without a list of names (e.g. an interrupted extraction).
    """

    samples: list[SampleFiles] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add_problem(self, reason: str, names: Sequence[str]) -> None:
        """Record ``names`` under ``reason`` (nothing when ``names`` is empty)."""
        if names:
            self.problems.setdefault(reason, []).extend(names)

    def lines(self) -> list[str]:
        """One line per problem: count, reason and the first names."""
        return [f"{len(names)} {reason}: {sample_names(names)}" for reason, names in self.problems.items()] + list(
            self.notes
        )


def report_listing(where: str, listing: Listing) -> None:
    """Log the problems of ``listing`` as one warning with counts; raise when nothing is usable.

    Raises:
        DatasetError: no usable sample remains (the message lists what was found instead).
    """
    lines = listing.lines()
    if not listing.samples:
        found = "; ".join(lines) if lines else "no image files"
        raise DatasetError(f"{where}: no usable samples ({found}); check the folder layout in training/DATASETS.md")
    if lines:
        _log.warning("%s: %d usable samples; problems found:\n  %s", where, len(listing.samples), "\n  ".join(lines))
    else:
        _log.info("%s: %d samples", where, len(listing.samples))


def check_root(root: Path) -> Path:
    """``root`` if it is a folder, else a :class:`DatasetNotFoundError` that says where it looked."""
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset folder {root} does not exist (relative paths are resolved against the "
            f"current directory {Path.cwd()}; run from the project root or give an absolute path)"
        )
    return root


def split_folder(root: Path, split: str, title: str) -> Path:
    """``root/split`` for layouts with one folder per split (MSRS, PST900, FMB).

    Raises:
        DatasetNotFoundError: ``root`` or the split folder does not exist (lists the folders found).
    """
    folder = check_root(root) / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DatasetNotFoundError(
            f"{title} split folder {folder} does not exist; {root} holds the folders: {', '.join(found) or 'none'}"
        )
    return folder


def list_pairs(rgb_dir: Path, thermal_dir: Path, labels_dir: Path | None, *, labels_required: bool,
               name_prefix: str = "") -> Listing:
    """List visible/thermal(/label) triples matched by file stem.

    Args:
        rgb_dir, thermal_dir: the visible and thermal folders.
        labels_dir: the class-id label folder; ``None`` for unlabelled data.
        labels_required: pairs without a label file are skipped (benchmarks) instead of being
            trained as unlabelled (generic folders).
        name_prefix: prepended to every sample name (to tell folders apart in a mix).

    Raises:
        DatasetNotFoundError: a folder does not exist.
        DatasetError: no stem matches between the visible and thermal folders.
    """
    pairs = find_pairs(thermal_dir, rgb_dir)
    listing = Listing()
    listing.add_problem(NO_THERMAL, pairs.missing_ir)
    listing.add_problem(NO_VISIBLE, pairs.missing_vi)
    labels = index_images(labels_dir, "label") if labels_dir is not None else {}
    unlabelled = [p.stem for p in pairs if p.stem not in labels] if labels_dir is not None else []
    if labels_required:
        listing.add_problem("pairs have no label file (skipped)", unlabelled)
    else:
        listing.add_problem("pairs have no label file (trained as unlabelled, labels 255)", unlabelled)
    imaged = set(pairs.stems) | set(pairs.missing_vi) | set(pairs.missing_ir)
    orphans = sorted(set(labels) - imaged)
    listing.add_problem("label files have neither a visible nor a thermal image (ignored)", orphans)
    listing.samples = [
        SampleFiles(f"{name_prefix}{p.stem}", p.vi_path, p.ir_path, labels.get(p.stem))
        for p in pairs
        if not (labels_required and p.stem not in labels)
    ]
    return listing
