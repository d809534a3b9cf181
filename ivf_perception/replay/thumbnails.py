"""The best and worst frames of a replay, kept as small thumbnails while it runs.

Why: a report that shows where a model fails is worth more than a table of means, but a long
bag cannot be held in memory. Only the current ``k`` best and ``k`` worst frames are kept
(RGB, thermal, fused, overlay, each scaled down), in two bounded heaps.

Frames are ranked by their own mIoU when ground truth exists, otherwise by Qabf (edge
information carried from the sources into the fused image), otherwise not at all.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import cv2
import numpy as np

from ivf_perception.io.thermal import agc_percentile

from .metrics import FrameResult

__all__ = ["Thumbnail", "ThumbnailKeeper", "frame_score"]

THUMB_WIDTH = 160


def frame_score(result: FrameResult) -> tuple[str, float] | None:
    """``(score name, value)`` used to rank a frame, or None if it cannot be ranked."""
    if result.miou is not None:
        return "mIoU", result.miou
    if result.fusion is not None:
        return "Qabf", float(result.fusion["Qabf"])
    return None


def _small(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= THUMB_WIDTH:
        return np.ascontiguousarray(image)
    size = (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _thermal_view(thermal: np.ndarray) -> np.ndarray:
    """Thermal as decoded → 8-bit RGB for display (16-bit through the default percentile AGC)."""
    if thermal.ndim == 3:
        return thermal
    if thermal.dtype == np.uint16:
        thermal = np.rint(agc_percentile(thermal) * 255.0).astype(np.uint8)
    return np.repeat(thermal[:, :, None], 3, axis=2)


@dataclass
class Thumbnail:
    """One ranked frame: ``images`` maps ``rgb``/``thermal``/``fused``/``overlay`` to small RGB arrays."""

    score: float
    index: int
    name: str
    score_name: str
    images: dict[str, np.ndarray] = field(default_factory=dict)


class ThumbnailKeeper:
    """Keeps the ``k`` best and ``k`` worst frames seen so far."""

    def __init__(self, k: int = 3) -> None:
        self.k = k
        self._best: list[tuple[float, int, Thumbnail]] = []  # min-heap: the weakest of the best on top
        self._worst: list[tuple[float, int, Thumbnail]] = []  # min-heap of -score: the best of the worst on top

    def wants(self, score: float) -> bool:
        """Whether a frame with this score would enter either list (to skip making its thumbnails)."""
        return (len(self._best) < self.k or score > self._best[0][0]
                or len(self._worst) < self.k or -score > self._worst[0][0])

    def offer(self, result: FrameResult, rgb: np.ndarray, thermal: np.ndarray, fused: np.ndarray,
              overlay: np.ndarray | None) -> None:
        ranked = frame_score(result)
        if ranked is None or self.k <= 0 or not self.wants(ranked[1]):
            return
        images = {"rgb": _small(rgb), "thermal": _small(_thermal_view(thermal)),
                  "fused": _small(fused)}
        if overlay is not None:
            images["overlay"] = _small(overlay)
        thumb = Thumbnail(ranked[1], result.index, result.name, ranked[0], images)
        for heap, key in ((self._best, ranked[1]), (self._worst, -ranked[1])):
            item = (key, result.index, thumb)
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif key > heap[0][0]:
                heapq.heapreplace(heap, item)

    @property
    def best(self) -> list[Thumbnail]:
        """Best first."""
        return [t for _, _, t in sorted(self._best, key=lambda x: (-x[0], x[1]))]

    @property
    def worst(self) -> list[Thumbnail]:
        """Worst first."""
        return [t for _, _, t in sorted(self._worst, key=lambda x: (-x[0], x[1]))]
