"""MSRS (Tang et al., Information Fusion 2022): aligned MFNet frames with enhanced thermal.

Layout (``Linfeng-Tang/MSRS``)::

    ROOT/{train,test}/vi/NAME.png                    RGB, 640x480
    ROOT/{train,test}/ir/NAME.png                    thermal, 8-bit gray
    ROOT/{train,test}/Segmentation_labels/NAME.png   class ids, MFNet's 9 classes

1083 training and 361 test pairs; names as in MFNet (``00001D``). The release also has
``Segmentation_visualize/`` (colour renderings, not usable as labels) and a ``detection/`` set.
"""

from __future__ import annotations

import os
from pathlib import Path

from ivf_perception.io.classes import class_table

from .common import PairDataset
from .listing import check_root, list_pairs, split_folder

__all__ = ["MSRSDataset"]


class MSRSDataset(PairDataset):
    """MSRS pairs of one split with their class-id labels (MFNet's 9 classes).

    Pairs are matched by stem across ``vi/``, ``ir/`` and ``Segmentation_labels/``; images missing
    on one side, or pairs without a label file, are skipped and listed with counts.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        split: a split folder name (``train`` or ``test``; any folder with the same layout works).
        short_side: resize so the shorter side has this many pixels (``None``: keep 480).
        max_pairs: use only the first pairs (sorted by name).
    """

    kind = "msrs"
    title = "MSRS"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        root_path = check_root(Path(root))
        folder = split_folder(root_path, split, self.title)
        listing = list_pairs(folder / "vi", folder / "ir", folder / "Segmentation_labels", labels_required=True)
        super().__init__(listing, root=root_path, split=split, class_table=class_table("msrs"),
                         short_side=short_side, max_pairs=max_pairs)
