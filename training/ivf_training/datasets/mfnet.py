"""MFNet (Ha et al., IROS 2017): 4-channel RGB+thermal PNGs, class-id labels, split files.

Layout (the original release and the RTFNet re-distribution)::

    ROOT/images/NAME.png    640x480 RGBA: channels 0-2 RGB, channel 3 thermal (8-bit)
    ROOT/labels/NAME.png    class ids 0..8 (unlabelled, car, person, bike, curve, car_stop,
                            guardrail, color_cone, bump)
    ROOT/train.txt          one NAME per line (784); also val.txt (392), test.txt (393),
                            test_day.txt, test_night.txt

Names end in ``D`` (day) or ``N`` (night), e.g. ``00001D``. Why a loader of its own: the thermal
image sits in what image libraries call the alpha channel, so a plain RGB reader loses it, and
the split is defined by the text files, not by folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ivf_perception.io.classes import class_table
from ivf_perception.io.errors import DatasetNotFoundError
from ivf_perception.io.image_files import read_mfnet_4ch

from .common import PairDataset
from .listing import Listing, SampleFiles, check_root

__all__ = ["MFNetDataset", "mfnet_splits"]


def mfnet_splits(root: Path) -> list[str]:
    """The split names defined in ``root`` (the stems of its ``*.txt`` files)."""
    return sorted(p.stem for p in root.glob("*.txt") if p.is_file())


def _read_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Names listed in ``split.txt`` (order kept, extension dropped) and the duplicated ones."""
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"MFNet split file {path} does not exist; splits in {root}: {', '.join(mfnet_splits(root)) or 'none'}"
        )
    names: list[str] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    for line in path.read_text().splitlines():
        name = line.strip()
        if not name:
            continue
        name = name[:-4] if name.lower().endswith(".png") else name
        if name in seen:
            duplicates.append(name)
        else:
            seen.add(name)
            names.append(name)
    return names, duplicates


def _list_mfnet(root: Path, split: str) -> Listing:
    names, duplicates = _read_split(root, split)
    images, labels = root / "images", root / "labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise DatasetNotFoundError(f"MFNet folder {folder} does not exist (expected images/ and labels/ in {root})")
    listing = Listing()
    no_image = [n for n in names if not (images / f"{n}.png").is_file()]
    no_label = [n for n in names if n not in no_image and not (labels / f"{n}.png").is_file()]
    listing.add_problem(f"names in {split}.txt have no image in images/ (skipped)", no_image)
    listing.add_problem(f"names in {split}.txt have no label in labels/ (skipped)", no_label)
    listing.add_problem(f"names appear more than once in {split}.txt (used once)", duplicates)
    skipped = set(no_image) | set(no_label)
    listing.samples = [
        SampleFiles(n, images / f"{n}.png", None, labels / f"{n}.png") for n in names if n not in skipped
    ]
    return listing


class MFNetDataset(PairDataset):
    """MFNet's labelled RGB-thermal frames of one split (9 classes: :data:`~ivf_perception.io.classes.MFNET_CLASSES`).

    Args:
        root: the folder holding ``images/``, ``labels/`` and the split files.
        split: the name of a split file without ``.txt`` (``train``, ``val``, ``test``,
            ``test_day``, ``test_night``).
        short_side: resize so the shorter side has this many pixels (``None``: keep 480).
        max_pairs: use only the first samples of the split file.
    """

    kind = "mfnet"
    title = "MFNet"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        root_path = check_root(Path(root))
        super().__init__(_list_mfnet(root_path, split), root=root_path, split=split, class_table=class_table("mfnet"),
                         short_side=short_side, max_pairs=max_pairs)

    def read_images(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        """Split the 4-channel PNG into RGB and thermal (``x / 255``)."""
        return read_mfnet_4ch(files.rgb)
