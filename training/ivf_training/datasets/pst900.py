"""PST900 (Shivakumar et al., ICRA 2020): subterranean RGB-thermal frames, 5 classes.

Layout (``ShreyasSkandanS/pst900_thermal_rgb``)::

    ROOT/{train,test}/rgb/NAME.png           RGB, 1280x720
    ROOT/{train,test}/thermal/NAME.png       thermal projected into the RGB frame, 8-bit
                                             (the camera's own AGC); 0 where no thermal pixel
                                             projects (parallax holes)
    ROOT/{train,test}/thermal_raw/NAME.png   the same, 16-bit raw counts
    ROOT/{train,test}/depth/NAME.png         16-bit stereo depth (not used)
    ROOT/{train,test}/labels/NAME.png        class ids 0..4: background, fire_extinguisher,
                                             backpack, hand_drill, survivor

894 pairs: 606 training and 288 test by the PST900 README (whose folder comments are swapped);
CMFS's training list has 597. ``thermal="thermal_raw"`` reads the 16-bit images, which go
through the shared percentile AGC like any raw camera; the default 8-bit images are used as
they are (``x / 255``), as the PST900 code does. Holes are left as zeros (PSTNet inpaints them
at load time; the fusion networks here see them as cold pixels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ivf_perception.io.classes import class_table
from ivf_perception.io.errors import DatasetError

from .common import PairDataset
from .listing import check_root, list_pairs, split_folder

__all__ = ["PST900Dataset"]

_THERMAL_FOLDERS = ("thermal", "thermal_raw")


class PST900Dataset(PairDataset):
    """PST900 pairs of one split with their class-id labels (5 classes).

    Args:
        root: the folder holding ``train/`` and ``test/`` (``PST900_RGBT_Dataset``).
        split: a split folder name (``train`` or ``test``).
        thermal: ``thermal`` (8-bit, the default) or ``thermal_raw`` (16-bit raw counts, AGC).
        short_side: resize so the shorter side has this many pixels (``None``: keep 720).
        max_pairs: use only the first pairs (sorted by name).
    """

    kind = "pst900"
    title = "PST900"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *,
                 thermal: Literal["thermal", "thermal_raw"] = "thermal", short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        if thermal not in _THERMAL_FOLDERS:
            raise DatasetError(f"PST900 thermal must be one of {', '.join(_THERMAL_FOLDERS)}; got {thermal!r}")
        root_path = check_root(Path(root))
        folder = split_folder(root_path, split, self.title)
        listing = list_pairs(folder / "rgb", folder / thermal, folder / "labels", labels_required=True)
        super().__init__(listing, root=root_path, split=split, class_table=class_table("pst900"),
                         short_side=short_side, max_pairs=max_pairs)
        self.thermal = thermal

    def describe(self) -> dict[str, object]:
        """The common description plus which thermal folder was read."""
        return {**super().describe(), "thermal": self.thermal}
