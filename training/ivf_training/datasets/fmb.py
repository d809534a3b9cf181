"""FMB (Liu et al., ICCV 2023, SegMiF): full-time multi-modality benchmark, 15 classes.

Layout (as read by the SegMiF, CMFS and other public FMB loaders)::

    ROOT/{train,test}/Visible/NAME.png    RGB, 800x600
    ROOT/{train,test}/Infrared/NAME.png   thermal, 8-bit gray
    ROOT/{train,test}/Label/NAME.png      class ids: 0 unlabelled, 1..14 road, sidewalk,
                                          building, traffic_lamp, traffic_sign, vegetation, sky,
                                          person, car, truck, bus, motorcycle, bicycle, pole

1220 training and 280 test pairs. Class 0 is kept as a class (15 in all), as CMFS counts it;
255, where present, is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from ivf_perception.io.classes import class_table

from .common import PairDataset
from .listing import check_root, list_pairs, split_folder

__all__ = ["FMBDataset"]


class FMBDataset(PairDataset):
    """FMB pairs of one split with their class-id labels (15 classes).

    Args:
        root: the folder holding ``train/`` and ``test/``.
        split: a split folder name (``train`` or ``test``).
        short_side: resize so the shorter side has this many pixels (``None``: keep 600).
        max_pairs: use only the first pairs (sorted by name).
    """

    kind = "fmb"
    title = "FMB"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        root_path = check_root(Path(root))
        folder = split_folder(root_path, split, self.title)
        listing = list_pairs(folder / "Visible", folder / "Infrared", folder / "Label", labels_required=True)
        super().__init__(listing, root=root_path, split=split, class_table=class_table("fmb"),
                         short_side=short_side, max_pairs=max_pairs)
