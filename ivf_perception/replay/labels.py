"""Ground-truth labels from a folder (``--labels DIR``), matched to replayed pairs.

Why: annotations of a recorded drive are usually exported as image files, not written back into
the bag. A label file is matched to a pair by the RGB header stamp, which is how the frame was
identified when it was extracted for annotation:

1. ``index.json`` next to (or one level above) the label files, as written by ``ivf-perception
   extract`` or ``generate``: its ``frames`` map names to ``stamp_ns`` / ``rgb_stamp_ns``.
2. Otherwise a file stem of 16 or more digits is the stamp in nanoseconds (``extract`` names
   files that way).
3. Otherwise stems are taken in sorted order as the pairs in pairing order (``000000.png`` is the
   first pair), which is how folders exported by frame number line up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import IMAGE_EXTENSIONS, read_image

__all__ = ["LabelFolder"]


class LabelFolder:
    """Look up label images by RGB stamp or pair index.

    Args:
        path: the folder of label images, or a dataset root holding ``labels/``.

    Raises:
        DatasetNotFoundError: the folder does not exist.
        DatasetError: it holds no image files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        root = Path(path)
        if not root.is_dir():
            raise DatasetNotFoundError(f"--labels folder does not exist: {root}")
        if (root / "labels").is_dir():
            root = root / "labels"
        self.root = root
        files = {p.stem: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
        if not files:
            raise DatasetError(f"--labels folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        self.by_stamp: dict[int, Path] = {}
        self.by_index: dict[int, Path] = {}
        index = next((p / "index.json" for p in (root, root.parent) if (p / "index.json").is_file()), None)
        if index is not None:
            self.mode = f"stamps from {index}"
            for frame in json.loads(index.read_text()).get("frames", []):
                stamp = frame.get("rgb_stamp_ns", frame.get("stamp_ns"))
                if stamp is not None and str(frame.get("name")) in files:
                    self.by_stamp[int(stamp)] = files[str(frame["name"])]
        elif all(stem.isdigit() and len(stem) >= 16 for stem in files):
            self.mode = "file names are stamps (ns)"
            self.by_stamp = {int(stem): p for stem, p in files.items()}
        else:
            self.mode = "files in sorted order = pairs in pairing order"
            self.by_index = dict(enumerate(files.values()))
        self.used = 0

    def lookup(self, rgb_stamp_ns: int, pair_index: int) -> np.ndarray | None:
        """The ``(H, W)`` class ids for a pair, or None if no file matches it.

        Raises:
            DatasetError: the matching file is not a single-channel image.
        """
        path = self.by_stamp.get(int(rgb_stamp_ns)) if self.by_stamp else self.by_index.get(pair_index)
        if path is None:
            return None
        labels = read_image(path)
        if labels.ndim == 3:
            gray = labels.shape[2] >= 3 and all((labels[..., 0] == labels[..., c]).all() for c in (1, 2))
            if gray:
                labels = labels[..., 0]
            else:
                raise DatasetError(f"{path}: label images must hold one class id per pixel (single channel)")
        self.used += 1
        return labels

    def __len__(self) -> int:
        return len(self.by_stamp or self.by_index)
