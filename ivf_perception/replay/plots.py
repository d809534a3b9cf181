"""Small inline SVG charts for the HTML report (histograms and a time series).

Why SVG by hand: the report must be one self-contained file, and matplotlib is not a dependency
of a robot's runtime; a few dozen lines of SVG give crisp, zoomable charts with no extra
package.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["svg_histogram", "svg_series"]

_W, _H = 520, 220
_L, _R, _T, _B = 56, 12, 26, 40  # margins: left (y labels), right, top (title), bottom (x labels)
_STYLE = 'font-family="sans-serif" font-size="11"'


def _frame(title: str, xlabel: str, ylabel: str, x_range: tuple[float, float], y_range: tuple[float, float],
           body: str) -> str:
    x0, x1 = x_range
    y0, y1 = y_range
    pw, ph = _W - _L - _R, _H - _T - _B
    ticks = []
    for i in range(5):
        fx = x0 + (x1 - x0) * i / 4
        px = _L + pw * i / 4
        ticks.append(f'<text x="{px:.1f}" y="{_T + ph + 14}" text-anchor="middle">{fx:.3g}</text>')
        fy = y0 + (y1 - y0) * i / 4
        py = _T + ph - ph * i / 4
        ticks.append(f'<text x="{_L - 4}" y="{py + 4:.1f}" text-anchor="end">{fy:.3g}</text>')
        ticks.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" {_STYLE}>'
        f'<text x="{_W / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
        + "".join(ticks) + body
        + f'<line x1="{_L}" x2="{_L}" y1="{_T}" y2="{_T + ph}" stroke="#444"/>'
        f'<line x1="{_L}" x2="{_L + pw}" y1="{_T + ph}" y2="{_T + ph}" stroke="#444"/>'
        f'<text x="{_L + pw / 2}" y="{_H - 6}" text-anchor="middle">{escape(xlabel)}</text>'
        f'<text x="12" y="{_T + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {_T + ph / 2})">'
        f'{escape(ylabel)}</text></svg>'
    )


def svg_histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 20,
                  x_range: tuple[float, float] | None = None) -> str:
    """A histogram of ``values`` (counts on the y axis); an empty chart says "no data"."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return _frame(title, xlabel, "frames", (0.0, 1.0), (0.0, 1.0),
                      f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>')
    lo, hi = x_range if x_range is not None else (float(arr.min()), float(arr.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(np.clip(arr, lo, hi), bins=bins, range=(lo, hi))
    pw, ph = _W - _L - _R, _H - _T - _B
    top = max(1, int(counts.max()))
    bars = []
    for i, c in enumerate(counts):
        x = _L + pw * i / bins
        h = ph * c / top
        bars.append(f'<rect x="{x + 1:.1f}" y="{_T + ph - h:.1f}" width="{max(pw / bins - 2, 1):.1f}" height="{h:.1f}" '
                    f'fill="#4a7ab5"><title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(c)}</title></rect>')
    return _frame(title, xlabel, "frames", (lo, hi), (0.0, float(top)), "".join(bars))


def svg_series(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str,
               band: tuple[float, float] | None = None) -> str:
    """Points ``(x, y)`` (e.g. pair skew over time), with an optional shaded band (e.g. ±slop)."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size == 0:
        return svg_histogram([], title, xlabel)
    x0, x1 = float(x.min()), float(x.max())
    if x1 <= x0:
        x1 = x0 + 1.0
    lim = max(float(np.abs(y).max()), abs(band[0]) if band else 0.0, abs(band[1]) if band else 0.0, 1e-9)
    pw, ph = _W - _L - _R, _H - _T - _B

    def py(v: float) -> float:  # y axis spans -lim..+lim
        return _T + ph / 2 - (ph / 2) * v / lim

    parts = []
    if band is not None:
        parts.append(f'<rect x="{_L}" y="{py(band[1]):.1f}" width="{pw}" height="{py(band[0]) - py(band[1]):.1f}" '
                     'fill="#e8f0e0"/>')
    parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{py(0):.1f}" y2="{py(0):.1f}" stroke="#999"/>')
    for xi, yi in zip(x, y):
        px = _L + pw * (xi - x0) / (x1 - x0)
        parts.append(f'<circle cx="{px:.1f}" cy="{py(yi):.1f}" r="2" fill="#b5544a"/>')
    return _frame(title, xlabel, ylabel, (x0, x1), (-lim, lim), "".join(parts))
