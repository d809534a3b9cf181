"""The folders written by ``ivf-perception extract``: recorded drives as training data.

Layout (:mod:`ivf_perception.io.extract_layout`, written by :mod:`ivf_perception.replay.extract`)::

    ROOT/vi/NAME.png       RGB, 8-bit
    ROOT/ir/NAME.png       thermal as recorded: 8-bit gray, 16-bit raw counts or RGB false colour
    ROOT/labels/NAME.png   class ids, for frames of bags with a label topic
    ROOT/index.json        format ``ivf_perception.extract/1``: source bag and topics, pairing,
                           one entry per frame (name, stamps, has_labels), undecodable frames

``NAME`` is the RGB stamp in nanoseconds. Why not read it as a plain folder: ``index.json`` is
the list of complete frames (files are renamed into place only when written), it says which
frames have labels, and it records what extraction skipped, so this loader can report frames
that are missing, were never decoded, or are on disk without being indexed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.extract_layout import EXTRACT_INDEX_FORMAT

from .common import PairDataset
from .listing import Listing, SampleFiles, check_root, index_images

__all__ = ["ExtractedDataset"]


def _read_index(root: Path) -> dict[str, Any]:
    """The parsed ``index.json`` of an extraction, after checking its format."""
    path = root / "index.json"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} does not exist: {root} is not an `ivf-perception extract` folder "
            "(for plain vi/ir/labels folders use kind 'folder')"
        )
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); run `ivf-perception extract` again") from exc
    if not isinstance(index, dict) or index.get("format") != EXTRACT_INDEX_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DatasetError(
            f"{path} has format {found!r}; expected {EXTRACT_INDEX_FORMAT!r} (written by ivf-perception extract)"
        )
    return index


def _list_extracted(root: Path, index: dict[str, Any]) -> Listing:
    frames = index.get("frames", [])
    label_topic = (index.get("source") or {}).get("topics", {}).get("label")
    listing = Listing()
    missing: list[str] = []
    unlabelled: list[str] = []
    for frame in frames:
        name = frame["name"]
        has_labels = bool(frame.get("has_labels"))
        vi, ir, labels = root / "vi" / f"{name}.png", root / "ir" / f"{name}.png", root / "labels" / f"{name}.png"
        if not (vi.is_file() and ir.is_file() and (labels.is_file() or not has_labels)):
            missing.append(name)
            continue
        if label_topic and not has_labels:
            unlabelled.append(name)
        listing.samples.append(SampleFiles(name, vi, ir, labels if has_labels else None))
    indexed = {frame["name"] for frame in frames}
    on_disk = set(index_images(root / "vi", "visible (vi)")) if (root / "vi").is_dir() else set()
    listing.add_problem("frames listed in index.json have missing files (skipped)", missing)
    listing.add_problem("frames were undecodable at extraction (not on disk; reasons in index.json)",
                        [s["name"] for s in index.get("skipped", [])])
    listing.add_problem("frames have no label message (trained as unlabelled, labels 255)", unlabelled)
    listing.add_problem("images in vi/ are not listed in index.json (ignored; run extract again to index them)",
                        sorted(on_disk - indexed))
    if not index.get("complete", False):
        listing.notes.append("the extraction did not finish (complete: false); run `ivf-perception extract` "
                             "again with the same options to resume it")
    return listing


class ExtractedDataset(PairDataset):
    """Frames of an ``ivf-perception extract`` folder, in stamp order, as listed by its ``index.json``.

    Thermal is read as recorded (8-bit, 16-bit raw counts through the shared AGC, or false colour
    reduced to luminance with a warning). Frames of a bag without a label topic are unlabelled
    (labels 255); their fusion losses still train.

    Args:
        root: the extraction folder (``--out`` of ``ivf-perception extract``).
        num_classes: number of classes the label topic's ids are checked against (``None``: no check).
        short_side: resize so the shorter side has this many pixels (``None``: keep).
        max_pairs: use only the first frames (in stamp order).
    """

    kind = "extract"
    title = "extract"

    def __init__(self, root: str | os.PathLike[str], *, num_classes: int | None = None, short_side: int | None = None,
                 max_pairs: int | None = None) -> None:
        root_path = check_root(Path(root))
        index = _read_index(root_path)
        self.source = (index.get("source") or {}).get("bag")
        self.complete = bool(index.get("complete", False))
        super().__init__(_list_extracted(root_path, index), root=root_path, split=None, num_classes=num_classes,
                         short_side=short_side, max_pairs=max_pairs)

    def describe(self) -> dict[str, Any]:
        """The common description plus the source bag and whether the extraction finished."""
        return {**super().describe(), "source_bag": self.source, "complete": self.complete}
