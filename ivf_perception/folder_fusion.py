"""Fuse folders of thermal/visible pairs with the Engine and write PNG outputs.

Shared by ``ivf-perception fuse`` and ``ivf-perception demo``. Bad inputs never stop the job:
pairs without a counterpart and unreadable images are skipped and listed in the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivf_perception.baselines import baseline_fuse
from ivf_perception.engine import Engine, InputError
from ivf_perception.engine.preprocess import align_thermal
from ivf_perception.io.errors import IVFIOError
from ivf_perception.io.image_files import find_pairs, read_rgb, read_thermal, write_png
from ivf_perception.io.thermal import AGCConfig

__all__ = ["FolderFusionSummary", "fuse_folders", "fuse_folders_baseline", "OUTPUT_DIRS"]

_log = logging.getLogger(__name__)

OUTPUT_DIRS = ("fused", "labels", "overlay")


@dataclass
class FolderFusionSummary:
    """What a folder job did."""

    written: list[str] = field(default_factory=list)
    missing_counterpart: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)

    @property
    def mean_latency_ms(self) -> float:
        return float(np.mean(self.latency_ms)) if self.latency_ms else float("nan")


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def fuse_folders(engine: Engine, ir_dir: str | Path, vi_dir: str | Path, out_dir: str | Path, *,
                 batch_size: int = 1, overlay_alpha: float = 0.5,
                 progress: Callable[[int, int], None] | None = None) -> FolderFusionSummary:
    """Fuse every pair matched by stem; write ``OUT/fused``, ``OUT/labels``, ``OUT/overlay``.

    Labels and overlays are written only when the model segments. Returns a summary listing
    skipped stems and per-image failures (with the reason).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    listing = find_pairs(ir_dir, vi_dir)
    summary = FolderFusionSummary(missing_counterpart=list(listing.missing_ir) + list(listing.missing_vi))
    out = Path(out_dir)
    pairs = list(listing.pairs)
    done = 0
    for chunk in _batches(pairs, batch_size):
        loaded = []
        for pair in chunk:
            try:
                loaded.append((pair.stem, read_rgb(pair.vi_path), read_thermal(pair.ir_path, agc=engine.agc)))
            except (IVFIOError, InputError, OSError) as exc:
                summary.failed[pair.stem] = str(exc)
                _log.warning("skipping %s: %s", pair.stem, exc)
        if loaded:
            try:
                results = engine.infer_batch([x[1] for x in loaded], [x[2] for x in loaded])
            except (IVFIOError, InputError) as exc:
                for stem, *_ in loaded:
                    summary.failed[stem] = str(exc)
                results = []
            for (stem, *_), res in zip(loaded, results):
                write_png(out / "fused" / f"{stem}.png", res.fused)
                overlay = res.overlay(overlay_alpha)  # None exactly when the model does not segment
                if res.labels is not None:
                    write_png(out / "labels" / f"{stem}.png", res.labels)
                if overlay is not None:
                    write_png(out / "overlay" / f"{stem}.png", overlay)
                summary.written.append(stem)
                summary.latency_ms.append(sum(res.timings_ms.values()) / len(results))
        done += len(chunk)
        if progress is not None:
            progress(done, len(pairs))
    return summary


def fuse_folders_baseline(ir_dir: str | Path, vi_dir: str | Path, fused_dir: str | Path, mode: str = "mean", *,
                          agc: AGCConfig | None = None) -> FolderFusionSummary:
    """Pixel-average or pixel-maximum fusion of every pair into ``fused_dir`` (no labels).

    The reference every learned model must beat, written like a model's output so
    ``eval-fusion`` scores both the same way.
    """
    listing = find_pairs(ir_dir, vi_dir)
    summary = FolderFusionSummary(missing_counterpart=list(listing.missing_ir) + list(listing.missing_vi))
    for pair in listing:
        try:
            vi = read_rgb(pair.vi_path)
            thermal = align_thermal(read_thermal(pair.ir_path, agc=agc), vi.shape[:2])
        except (IVFIOError, InputError, OSError) as exc:
            summary.failed[pair.stem] = str(exc)
            continue
        write_png(Path(fused_dir) / f"{pair.stem}.png", baseline_fuse(vi, thermal, mode))
        summary.written.append(pair.stem)
    return summary
