"""Automatic gain control (AGC) for raw 16-bit thermal counts.

Why: radiometric and RAW16 cameras (FLIR Boson/Lepton, ...) put a scene's useful temperature
span into a few hundred of the 65536 possible counts. A fixed ``x / 65535`` scale (what cv_bridge
and most viewers do) therefore yields an almost flat grey image. The fusion networks expect
thermal in ``[0, 1]`` with contrast comparable to the 8-bit AGC output their training sets were
recorded with, so we clip each frame to a low/high percentile of its own counts and stretch that
window to ``[0, 1]`` (the "linear histogram" AGC of thermal camera SDKs).

Percentiles use linear interpolation between order statistics (numpy's default ``"linear"``
method), identically in the numpy and torch versions, so CPU pre-processing in a dataset loader
and GPU pre-processing in the engine give the same values (to float32 rounding, ~1e-7).

A frame whose window is empty (constant image, or ``high == low``) maps to zeros, never NaN: a
lens cap or a flat-field correction frame must not poison a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import AGCError

if TYPE_CHECKING:  # torch stays an optional, lazily imported dependency of io/
    import torch

__all__ = ["AGCConfig", "AGC_MODES", "AGCState", "BT601_LUMA", "agc_percentile", "agc_percentile_torch",
           "crop_rows", "percentile_bounds", "stretch"]

AGC_MODES = ("percentile", "fixed")
"""``percentile``: each frame's (optionally smoothed) percentile window; ``fixed``: a constant
window of counts (raw counts, or Kelvin×100 for radiometric T-linear cameras)."""

BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights (R, G, B): how false-colour thermal becomes one channel, for camera
frames (engine pre-processing) and image files alike."""


def _check_percentiles(low_pct: float, high_pct: float) -> tuple[float, float]:
    """Validate and return the percentile pair as floats."""
    try:
        low, high = float(low_pct), float(high_pct)
    except (TypeError, ValueError) as exc:
        raise AGCError(
            f"AGC percentiles must be numbers, got low_pct={low_pct!r}, high_pct={high_pct!r}"
        ) from exc
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 100.0):
        raise AGCError(
            f"AGC percentiles must satisfy 0 <= low_pct < high_pct <= 100, got "
            f"low_pct={low_pct}, high_pct={high_pct}; typical values are 1.0 and 99.0"
        )
    return low, high


@dataclass(frozen=True)
class AGCConfig:
    """Parameters of the thermal AGC, validated on construction.

    Attributes:
        low_pct: counts at or below this percentile of the frame map to 0.
        high_pct: counts at or above this percentile map to 1. ``0`` and ``100`` give a plain
            min/max stretch, which is sensitive to hot/dead pixels; 1/99 ignores them.
        mode: ``percentile`` or ``fixed`` (:data:`AGC_MODES`).
        fixed_low, fixed_high: the window of ``fixed`` mode, in counts. Radiometric T-linear
            cameras (Boson, Lepton 3.5) send Kelvin×100: 27315..37315 is 0..100 °C.
        smoothing: weight of the previous window in an exponential moving average of the
            percentile bounds (0 = every frame its own window, as a still image gets; 0.9 = a
            window that follows the scene over about ten frames without frame-to-frame flicker).
            Only :class:`AGCState` (one per camera stream) uses it.
    """

    low_pct: float = 1.0
    high_pct: float = 99.0
    mode: str = "percentile"
    fixed_low: float = 0.0
    fixed_high: float = 65535.0
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check_percentiles(self.low_pct, self.high_pct)
        if self.mode not in AGC_MODES:
            raise AGCError(f"AGC mode must be one of {', '.join(AGC_MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.fixed_low) and math.isfinite(self.fixed_high) and self.fixed_low < self.fixed_high):
            raise AGCError(f"fixed AGC window needs finite fixed_low < fixed_high, got "
                           f"{self.fixed_low}..{self.fixed_high}")
        if not 0.0 <= self.smoothing < 1.0:
            raise AGCError(f"AGC smoothing must be in [0, 1), got {self.smoothing}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """One frame without history: its own percentile window, or the fixed one."""
        if self.mode == "fixed":
            return stretch(_checked_counts(raw), self.fixed_low, self.fixed_high)
        return agc_percentile(raw, self.low_pct, self.high_pct)


class AGCState:
    """The AGC of one camera stream: a window that moves smoothly from frame to frame.

    Why: a per-frame percentile window jumps whenever a hot object enters or leaves the view,
    and the whole image flickers in brightness; averaging the bounds over time (exponential
    moving average, weight ``config.smoothing`` on the past) keeps the picture steady while
    still following the scene. The history is that stream's alone, and :meth:`reset` (a bag
    loop, a clock jump, another image size) starts it again from the next frame's own window.
    """

    def __init__(self, config: AGCConfig) -> None:
        self.config = config
        self._bounds: tuple[float, float] | None = None
        self._shape: tuple[int, ...] | None = None

    def reset(self) -> None:
        """Forget the history: the next frame gets its own window."""
        self._bounds = self._shape = None

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The current (smoothed) window in counts, None before the first frame."""
        return self._bounds

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """The frame in ``[0, 1]`` through the stream's window (updated by this frame)."""
        cfg = self.config
        if cfg.mode == "fixed":
            return cfg.apply(raw)
        arr = _checked_counts(raw)
        if arr.shape != self._shape:
            self.reset()  # another camera mode: the old window says nothing about it
            self._shape = arr.shape
        lo, hi = percentile_bounds(arr, cfg.low_pct, cfg.high_pct)
        if self._bounds is not None and cfg.smoothing > 0.0:
            a = cfg.smoothing
            lo, hi = a * self._bounds[0] + (1 - a) * lo, a * self._bounds[1] + (1 - a) * hi
        self._bounds = (lo, hi)
        return stretch(arr, lo, hi)


def crop_rows(image: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Drop ``top`` and ``bottom`` rows (a view, no copy).

    Why: Boson and Lepton RAW16 frames can carry telemetry rows (a Lepton 3 sends 2-3 extra rows
    below or above the image, a Boson one above); their values are not temperatures and would
    skew the AGC's percentiles and show up as a stripe in the fused image.

    Raises:
        AGCError: fewer than two image rows would remain.
    """
    if top < 0 or bottom < 0:
        raise AGCError(f"thermal_crop_rows must be non-negative, got [{top}, {bottom}]")
    if image.shape[0] - top - bottom < 2:
        raise AGCError(f"thermal_crop_rows [{top}, {bottom}] leaves {image.shape[0] - top - bottom} of the "
                       f"{image.shape[0]} rows of the thermal image")
    return image[top:image.shape[0] - bottom]


def agc_percentile(raw: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Clip a thermal frame to two of its percentiles and stretch the window to ``[0, 1]``.

    Args:
        raw: ``(H, W)`` (or any shape) array of raw counts, usually ``uint16``; any integer or
            finite floating dtype works. Percentiles are taken over the whole array.
        low_pct: lower percentile in ``[0, 100)``.
        high_pct: upper percentile in ``(low_pct, 100]``.

    Returns:
        ``float32`` array of the same shape with values in ``[0, 1]``; all zeros when the
        percentile window is empty (constant frame).

    Raises:
        AGCError: invalid percentiles, an empty array, a non-numeric dtype or non-finite values.

    Example:
        >>> agc_percentile(np.array([[0, 10], [20, 30]], np.uint16), 0, 100).tolist()
        [[0.0, 0.3333333432674408], [0.6666666865348877, 1.0]]
    """
    low, high = _check_percentiles(low_pct, high_pct)
    arr = _checked_counts(raw)
    lo, hi = percentile_bounds(arr, low, high)
    return stretch(arr, lo, hi)


def _checked_counts(raw: np.ndarray) -> np.ndarray:
    """``raw`` as an array of counts: non-empty, integer or finite float."""
    arr = np.asarray(raw)
    if arr.size == 0:
        raise AGCError(f"AGC needs a non-empty image, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise AGCError(
            f"AGC expects integer counts (e.g. uint16) or floats, got dtype {arr.dtype}"
        )
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise AGCError(
            "AGC input contains NaN or infinite values; replace them (e.g. np.nan_to_num) first"
        )
    return arr


def percentile_bounds(arr: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    """The two percentiles of a frame (exact, by histogram, for uint8/uint16 counts)."""
    if arr.dtype in _HISTOGRAM_DTYPES:
        lo, hi = _percentiles_by_histogram(arr, (low_pct, high_pct))
    else:
        lo, hi = np.percentile(arr, [low_pct, high_pct])
    return float(lo), float(hi)


def stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map counts ``lo..hi`` linearly to ``[0, 1]`` (clipped); all zeros for an empty window.

    float32 arithmetic, the same formula as the torch version, so both agree to rounding.
    """
    lo32 = np.float32(lo)
    span = np.float32(hi) - lo32
    if not span > 0:
        return np.zeros(arr.shape, np.float32)
    scale = np.float32(1.0) / span
    if arr.dtype in _HISTOGRAM_DTYPES and arr.size > 4 * np.iinfo(arr.dtype).max:
        # one table entry per possible count, computed with the very same float32 operations,
        # then one gather: bit-identical to the arithmetic below and one pass over the frame
        table = np.arange(np.iinfo(arr.dtype).max + 1, dtype=np.float32)
        table -= lo32
        table *= scale
        np.clip(table, 0.0, 1.0, out=table)
        return np.take(table, arr)
    out = arr.astype(np.float32)
    out -= lo32
    out *= scale
    np.clip(out, 0.0, 1.0, out=out)
    return out


# Camera counts: a histogram of every possible value is small, and its cumulative sum gives
# any order statistic exactly; np.percentile instead partitions a copy of the frame
# (480x640 mono16: 2.7 ms -> 0.4 ms on this project's 2-core machine).
_HISTOGRAM_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _percentiles_by_histogram(arr: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """``np.percentile(arr, percentiles)`` (``"linear"`` method) of a uint8/uint16 array.

    The same virtual index ``(n - 1) * q`` and the same interpolation (numpy's ``_lerp``,
    which switches to ``b - (b - a) * (1 - t)`` for ``t >= 0.5``) as numpy, so the results
    are equal, not just close; the order statistics come from the cumulative histogram.
    """
    flat = arr.reshape(-1)
    n = flat.size
    cumulative = np.cumsum(np.bincount(flat, minlength=np.iinfo(arr.dtype).max + 1))
    values = []
    for pct in percentiles:
        virtual = (n - 1) * (np.float64(pct) / 100)
        k0 = n - 1 if virtual >= n - 1 else int(np.floor(virtual))
        k1 = min(k0 + 1, n - 1)
        # the k-th order statistic (0-based) is the first count whose cumulative total exceeds k
        a, b = (arr.dtype.type(np.searchsorted(cumulative, k, side="right")) for k in (k0, k1))
        t = virtual - np.floor(virtual) if virtual < n - 1 else np.float64(0.0)
        diff = np.subtract(b, a)
        values.append(float(b - diff * (1 - t)) if t >= 0.5 else float(a + diff * t))
    return values


def _kth_interpolated(flat: torch.Tensor, pct: float) -> torch.Tensor:
    """Per-row percentile of a ``(B, N)`` float tensor, numpy ``"linear"`` method.

    ``torch.quantile`` would do, but it refuses inputs above 16M elements (a batch of 8
    1280x1024 frames is 10M, a batch of 16 is not) and sorts; ``kthvalue`` selects the two
    neighbouring order statistics exactly, and the interpolation runs on ``(B,)`` scalars in
    float64 so the result matches ``np.percentile``.
    """
    import torch

    n = flat.shape[1]
    pos = pct / 100.0 * (n - 1)
    k0 = int(math.floor(pos))
    frac = pos - k0
    v0 = torch.kthvalue(flat, k0 + 1, dim=1).values.double()
    if frac == 0.0 or k0 + 1 >= n:
        return v0
    v1 = torch.kthvalue(flat, k0 + 2, dim=1).values.double()
    return v0 + (v1 - v0) * frac


def agc_percentile_torch(
    raw: torch.Tensor, low_pct: float = 1.0, high_pct: float = 99.0
) -> torch.Tensor:
    """Batched percentile AGC on any device; per-image percentiles, same result as numpy.

    Args:
        raw: ``(B, 1, H, W)`` tensor of raw counts (``uint16``, any integer or float dtype).
        low_pct: lower percentile in ``[0, 100)``.
        high_pct: upper percentile in ``(low_pct, 100]``.

    Returns:
        ``(B, 1, H, W)`` ``float32`` tensor in ``[0, 1]`` on ``raw``'s device; images whose
        window is empty are all zeros.

    Raises:
        AGCError: invalid percentiles or non-finite values.
        ShapeError: ``raw`` is not ``(B, 1, H, W)``.

    Shape:
        - raw: ``(B, 1, H, W)``
        - output: ``(B, 1, H, W)``
    """
    import torch

    from ivf_perception.checks import check_shape

    low, high = _check_percentiles(low_pct, high_pct)
    check_shape(raw, "B 1 H W", name="raw")
    if raw.numel() == 0:
        raise AGCError(f"AGC needs non-empty images, got shape {tuple(raw.shape)}")
    x = raw.to(torch.float32)
    if raw.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise AGCError(
            "AGC input contains NaN or infinite values; replace them (torch.nan_to_num) first"
        )
    flat = x.reshape(x.shape[0], -1)
    lo = _kth_interpolated(flat, low).to(torch.float32)
    hi = _kth_interpolated(flat, high).to(torch.float32)
    span = hi - lo
    valid = span > 0
    safe_span = torch.where(valid, span, torch.ones_like(span))
    scale = torch.where(valid, 1.0 / safe_span, torch.zeros_like(span))
    out = (x - lo.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)
    return out.clamp_(0.0, 1.0)
