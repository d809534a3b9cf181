"""Drawing surfaces and the road's perspective, shared by every painter.

A :class:`Canvas` holds albedo, emission, temperature and labels so one call draws a surface in
all of them: images and labels can never disagree about where an object is. Geometry is drawn
with cv2 in fixed point (:data:`SHIFT` fractional bits) so small, far objects keep their
sub-pixel shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

__all__ = ["HALF_ROAD_M", "ONE", "SHIFT", "Canvas", "Colour", "Depth", "Road", "fx"]

SHIFT = 4  # fractional bits for cv2 drawing (sub-pixel geometry for small, far objects)
ONE = 1 << SHIFT
HALF_ROAD_M = 3.5  # half the road width in metres: the perspective scale reference

Colour = Sequence[float] | np.ndarray
"""An RGB reflectance or light amount: the painters pass tuples and jittered numpy triples."""

Depth = float | np.floating | np.ndarray
"""Road depth ``t`` (0 at the horizon, 1 at the image bottom): a number or an array of them."""


def fx(points: np.ndarray) -> list[np.ndarray]:
    """Points (N, 2) in float pixels -> the fixed-point int32 form cv2 wants with ``shift``.

    A 3-D array ``(P, N, 2)`` gives ``P`` polygons (drawn by one cv2 call).
    """
    arr = np.round(np.asarray(points, np.float64) * ONE).astype(np.int32)
    if arr.ndim == 3:
        return list(arr)
    return [arr.reshape(-1, 1, 2)]


class Canvas:
    """Albedo (RGB reflectance), emission, temperature and labels, drawn together."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.albedo = np.zeros((height, width, 3), np.float32)
        self.emissive = np.zeros((height, width, 3), np.float32)
        self.temp = np.zeros((height, width), np.float32)
        self.labels = np.zeros((height, width), np.uint8)

    def poly(self, pts: np.ndarray, colour: Colour, temp: float | None,
             label: int | None = None) -> None:
        p = fx(pts)
        cv2.fillPoly(self.albedo, p, tuple(float(c) for c in colour), cv2.LINE_8, SHIFT)
        if temp is not None:
            cv2.fillPoly(self.temp, p, float(temp), cv2.LINE_8, SHIFT)
        if label is not None:
            cv2.fillPoly(self.labels, p, int(label), cv2.LINE_8, SHIFT)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour,
             temp: float | None, label: int | None = None) -> None:
        self.poly(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), colour, temp, label)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, colour: Colour,
                temp: float | None, label: int | None = None, thickness: int = -1,
                angle: float = 0.0) -> None:
        centre = (int(round(cx * ONE)), int(round(cy * ONE)))
        axes = (max(int(round(ax * ONE)), ONE // 2), max(int(round(ay * ONE)), ONE // 2))
        args = (centre, axes, angle, 0, 360)
        cv2.ellipse(self.albedo, *args, tuple(float(c) for c in colour), thickness, cv2.LINE_8, SHIFT)
        if temp is not None:
            cv2.ellipse(self.temp, *args, float(temp), thickness, cv2.LINE_8, SHIFT)
        if label is not None:
            cv2.ellipse(self.labels, *args, int(label), thickness, cv2.LINE_8, SHIFT)

    def line(self, p0: Sequence[float], p1: Sequence[float], width: float,
             colour: Colour, temp: float | None, label: int | None = None) -> None:
        """A thick segment as a polygon (cv2.line widths are integers and ignore sub-pixels)."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        norm = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / norm * width / 2, dx / norm * width / 2
        pts = np.array([[x0 + nx, y0 + ny], [x1 + nx, y1 + ny], [x1 - nx, y1 - ny], [x0 - nx, y0 - ny]])
        self.poly(pts, colour, temp, label)

    def glow(self, target: np.ndarray, cx: float, cy: float, sx: float, sy: float,
             amount: Colour | float) -> None:
        """Add a Gaussian blob (light pool or bloom) to ``target`` inside a 3-sigma window."""
        sx, sy = max(sx, 0.5), max(sy, 0.5)
        x0, x1 = max(int(cx - 3 * sx), 0), min(int(cx + 3 * sx) + 1, self.w)
        y0, y1 = max(int(cy - 3 * sy), 0), min(int(cy + 3 * sy) + 1, self.h)
        if x0 >= x1 or y0 >= y1:
            return
        gx = np.exp(-0.5 * ((np.arange(x0, x1, dtype=np.float32) - cx) / sx) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1, dtype=np.float32) - cy) / sy) ** 2)
        blob = gy[:, None] * gx[None, :]
        if target.ndim == 3:
            target[y0:y1, x0:x1] += blob[:, :, None] * np.asarray(amount, np.float32).reshape(1, 1, -1)
        else:
            target[y0:y1, x0:x1] += blob * np.float32(cast(float, amount))  # 2-D targets take one amount


@dataclass
class Road:
    """Perspective road model: ``t`` is 0 at the horizon and 1 at the image bottom.

    Image row is linear in ``t`` and road half-width is linear in ``t`` (a flat ground plane seen
    by a pinhole camera), so ``t`` is inversely proportional to distance. Lateral position ``u``
    is in road half-widths: -1/+1 are the road edges.
    """

    y_h: float
    height: int
    cb: float  # road centre x at the bottom
    cf: float  # road centre x at the horizon (curvature)
    hb: float  # half-width at the bottom (px)
    h0: float  # half-width at the horizon (px)

    def y(self, t: Depth) -> Depth:
        return self.y_h + t * (self.height - self.y_h)

    def half(self, t: Depth) -> Depth:
        return self.h0 + (self.hb - self.h0) * t

    def x(self, t: Depth, u: float) -> Depth:
        return self.cb + (self.cf - self.cb) * (1.0 - np.minimum(t, 1.0)) ** 2 + u * self.half(t)

    def m2px(self, t: Depth) -> float:
        """Pixels per metre at depth ``t``."""
        return float(self.half(t)) / HALF_ROAD_M

    def strip(self, u0: float, u1: float, t0: float, t1: float, n: int = 24) -> np.ndarray:
        """Polygon of the ground strip between lateral positions ``u0``/``u1`` and depths t0..t1."""
        ts = np.linspace(t0, t1, n)
        ys = self.y(ts)
        left = np.stack([self.x(ts, u0), ys], axis=1)
        right = np.stack([self.x(ts, u1), ys], axis=1)
        return np.concatenate([left, right[::-1]], axis=0)
