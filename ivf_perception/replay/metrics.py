"""Per-frame and aggregated replay metrics: fusion quality, segmentation, latency, throughput.

Why here and not in the runner: the metrics must be the very ones ``eval-fusion`` and the demo
report (one implementation, :mod:`ivf_perception.metrics`), prepared the same way
(:func:`~ivf_perception.metrics.prepare.prepare_for_metrics`: BT.601 gray, percentile AGC for
16-bit thermal); this module only decides what is accumulated over which frames.

- Fusion metrics (DESIGN §6) of every frame, averaged overall, by day and by night.
- Day/night is derived from the RGB image: a frame is "night" when its mean BT.601 luma is
  below :data:`NIGHT_LUMA_THRESHOLD` (0..255). Generated scenes measure about 100–120 by day and
  25–45 by night; real night drives with headlights and street lamps sit around 20–60.
- Segmentation IoU/mIoU from one confusion matrix per split over all frames with ground truth
  (DESIGN §6: not a mean of per-image IoUs); each frame's own mIoU is kept only to rank frames.
- Latency per stage (p50/p95/p99) and throughput.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ivf_perception.io.registration import resize_to, warp_thermal
from ivf_perception.metrics import ConfusionAccumulator, FusionMetricAccumulator, confusion_matrix, fusion_metrics, miou
from ivf_perception.metrics.prepare import prepare_for_metrics

__all__ = ["NIGHT_LUMA_THRESHOLD", "PIPELINE_STAGES", "FrameResult", "ReplayMetrics", "mean_luma", "latency_stats"]

NIGHT_LUMA_THRESHOLD = 70.0
PIPELINE_STAGES = ("read", "decode", "preprocess", "inference", "postprocess", "overlay", "write")
"""Stages of one frame's way through replay; ``metrics`` is timed too but is not part of it."""
_LUMA = np.array([0.299, 0.587, 0.114])


def mean_luma(rgb: np.ndarray) -> float:
    """Mean BT.601 luma of an ``(H, W, 3)`` uint8 RGB image, 0..255."""
    return float(rgb.reshape(-1, 3).mean(axis=0) @ _LUMA)


def latency_stats(values: Sequence[float]) -> dict[str, float]:
    """``mean``, ``p50``, ``p95``, ``p99``, ``max`` of latencies in ms (empty dict for no values)."""
    if not len(values):
        return {}
    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": float(arr.max())}


@dataclass
class FrameResult:
    """What replay knows about one processed frame (one row of ``metrics.json``'s ``per_frame``)."""

    index: int
    name: str
    rgb_stamp_ns: int
    thermal_stamp_ns: int
    skew_ms: float
    brightness: float
    is_night: bool
    fusion: dict[str, float] | None = None
    miou: float | None = None
    has_ground_truth: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    @property
    def pipeline_ms(self) -> float:
        return sum(self.timings_ms.get(s, 0.0) for s in PIPELINE_STAGES)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pipeline_ms"] = self.pipeline_ms
        return out


class ReplayMetrics:
    """Accumulates metrics frame by frame; :meth:`summary` gives the JSON-ready aggregate.

    Args:
        class_names: the engine's classes (``K`` names); empty for a fusion-only engine.
        fusion: compute the eleven fusion metrics per frame (they cost about as much as a
            small model's inference; switch off for speed runs).
        night_threshold: mean-luma threshold of the day/night split.
        homography: the engine's thermal→RGB registration, so metrics see thermal as it did.
    """

    def __init__(self, class_names: Sequence[str], *, fusion: bool = True,
                 night_threshold: float = NIGHT_LUMA_THRESHOLD, homography: np.ndarray | None = None) -> None:
        self.class_names = list(class_names)
        self.fusion_enabled = fusion
        self.night_threshold = float(night_threshold)
        self.homography = homography
        self.frames: list[FrameResult] = []
        self._fusion = {s: FusionMetricAccumulator() for s in ("all", "day", "night")}
        k = len(self.class_names)
        splits = ("all", "day", "night") if k else ()
        self._conf = {s: ConfusionAccumulator(k, class_names=self.class_names) for s in splits}
        self.label_errors = 0

    def add(self, result: FrameResult, rgb: np.ndarray, thermal: np.ndarray, fused: np.ndarray,
            labels: np.ndarray | None, ground_truth: np.ndarray | None) -> FrameResult:
        """Score one frame and accumulate it; records its ``metrics`` time in ``result.timings_ms``.

        Args:
            rgb: the engine's validated ``(H, W, 3)`` uint8 RGB (``EngineResult.rgb``).
            thermal: the thermal image as decoded (raw counts or 8-bit).
        """
        start = time.perf_counter()
        split = "night" if result.is_night else "day"
        if self.fusion_enabled:
            result.fusion = self._fusion_metrics(rgb, thermal, fused)
            for s in ("all", split):
                self._fusion[s].update(result.fusion)
        if ground_truth is not None and labels is not None and self._conf:
            self._segmentation(result, labels, ground_truth, split)
        result.timings_ms["metrics"] = (time.perf_counter() - start) * 1e3
        self.frames.append(result)
        return result

    def _fusion_metrics(self, rgb: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> dict[str, float]:
        vi = prepare_for_metrics(rgb, "vi")
        ir = prepare_for_metrics(thermal, "ir")
        if self.homography is not None:
            ir = np.rint(warp_thermal(ir, self.homography, vi.shape))
        elif ir.shape != vi.shape:
            ir = np.rint(resize_to(ir, vi.shape))
        return fusion_metrics(prepare_for_metrics(fused, "vi"), ir, vi, prepare=False)

    def _segmentation(self, result: FrameResult, labels: np.ndarray, truth: np.ndarray, split: str) -> None:
        k = len(self.class_names)
        if truth.shape != labels.shape:
            result.note = f"ground truth {truth.shape[1]}x{truth.shape[0]} does not match the image; not scored"
            self.label_errors += 1
            return
        try:
            conf = confusion_matrix(labels, truth, k)
        except ValueError as exc:  # class ids out of range
            result.note = f"ground truth not scored: {exc}"
            self.label_errors += 1
            return
        value = miou(conf)
        result.miou = None if math.isnan(value) else float(value)
        result.has_ground_truth = True
        for s in ("all", split):
            self._conf[s].update(labels, truth)

    # ------------------------------------------------------------------ aggregate

    def summary(self, wall_s: float) -> dict[str, Any]:
        """Aggregates over the frames added so far (``wall_s``: the replay's wall-clock time, warm-up excluded)."""
        frames = self.frames
        n = len(frames)
        fusion = {s: acc.compute() for s, acc in self._fusion.items() if acc.count}
        counts = {"day": sum(not f.is_night for f in frames), "night": sum(f.is_night for f in frames)}
        segmentation = None
        if self._conf and any(acc.num_updates for acc in self._conf.values()):
            segmentation = {s: {**acc.scores(), "frames": acc.num_updates}
                            for s, acc in self._conf.items() if acc.num_updates}
        stages = sorted({k for f in frames for k in f.timings_ms}, key=lambda s: (s not in PIPELINE_STAGES, s))
        latency = {s: latency_stats([f.timings_ms[s] for f in frames if s in f.timings_ms]) for s in stages}
        latency["pipeline"] = latency_stats([f.pipeline_ms for f in frames])
        engine_ms = sum(f.timings_ms.get(s, 0.0) for f in frames for s in ("preprocess", "inference", "postprocess"))
        pipeline_ms = sum(f.pipeline_ms for f in frames)
        return {
            "frames": n,
            "day_night": {"rule": f"night if mean BT.601 luma of the RGB image < {self.night_threshold:g} (0-255)",
                          "threshold": self.night_threshold, **counts},
            "fusion": fusion,
            "segmentation": segmentation,
            "ground_truth_frames": sum(f.has_ground_truth for f in frames),
            "ground_truth_not_scored": self.label_errors,
            "latency_ms": latency,
            "throughput": {
                "wall_s": wall_s,
                "fps_wall": n / wall_s if wall_s > 0 else 0.0,
                "fps_pipeline": n / (pipeline_ms / 1e3) if pipeline_ms > 0 else 0.0,
                "fps_engine": n / (engine_ms / 1e3) if engine_ms > 0 else 0.0,
            },
            "per_frame": [f.as_dict() for f in frames],
        }
