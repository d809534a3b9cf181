"""Deterministic generated road scenes: RGB, thermal and pixel labels for the 9 MFNet classes.

Why: no labelled RGB-thermal data is reachable for this project, yet segmentation learning,
the engine, the node, replay and the metrics must be exercised end to end on data with known
labels. The scenes are built so that fusion genuinely needs both modalities:

- By night the RGB image is dark and noisy; only what headlights, street lamps and lit windows
  illuminate is visible, while people, cars (engine, tyres, exhaust) stay clear in thermal.
- By day RGB shows everything, but cones, bumps, car stops, curbs, guardrails and bikes sit
  close to the temperature of the road around them (low thermal contrast), and hot asphalt can
  match the temperature of clothing.

The scene is a road in perspective (curving, with dashed markings), ground, sky and a skyline of
buildings and trees. Curbs (MFNet "curve"), guardrails, bumps and car stops are drawn on the
ground; cars, people, bikes (optionally ridden) and cones stand on it, painted far to near so
nearer objects occlude farther ones in the images and the labels alike. Each surface carries a
temperature in degrees Celsius; the thermal camera model turns it into raw 16-bit counts with
optics blur, column fixed-pattern noise and temporal noise, and the 8-bit thermal image is our
own percentile AGC of those counts (what a camera's 8-bit output does). Labels are aligned with
the RGB image; ``thermal_misregistration_px`` shifts the thermal images only, as an unregistered
rig would.

Everything random comes from ``numpy.random.default_rng([seed, index])``: the same index and
configuration always give the same scene, on any machine, independently of other indices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .bag import BagFrame, write_image_bag
from .classes import MFNET_CLASSES, MFNET_PALETTE
from .errors import IVFIOError
from .image_files import write_png
from .thermal import agc_percentile

__all__ = [
    "SceneConfig",
    "Scene",
    "generate_scene",
    "iter_scenes",
    "scene_stamp_ns",
    "write_scene_folder",
    "write_scene_bag",
    "UNLABELLED",
    "CAR",
    "PERSON",
    "BIKE",
    "CURVE",
    "CAR_STOP",
    "GUARDRAIL",
    "COLOR_CONE",
    "BUMP",
]

UNLABELLED, CAR, PERSON, BIKE, CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP = range(9)

BASE_STAMP_NS = 1_700_000_000 * 1_000_000_000  # 2023-11-14, so stamps look like wall time
_SHIFT = 4  # fractional bits for cv2 drawing (sub-pixel geometry for small, far objects)
_ONE = 1 << _SHIFT
_HALF_ROAD_M = 3.5  # half the road width in metres: the perspective scale reference


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are generated.

    Attributes:
        height: image height in pixels (>= 64).
        width: image width in pixels (>= 64).
        night: ``True``/``False`` forces night/day; ``None`` draws it per scene (50 %).
        rgb_noise_std: Gaussian RGB noise by day, in 8-bit levels.
        night_rgb_noise_std: Gaussian RGB noise by night (high sensor gain), in 8-bit levels.
        thermal_noise_std: temporal thermal noise in raw counts (~45 counts per kelvin).
        thermal_fpn_std: column fixed-pattern noise in raw counts (uncooled microbolometers).
        thermal_misregistration_px: shift of the thermal images relative to RGB/labels, either
            ``dx`` (horizontal, the usual side-by-side parallax) or ``(dx, dy)``; positive moves
            the thermal content right/down.
        seed: base seed; scene ``i`` uses ``default_rng([seed, i])``.
    """

    height: int = 240
    width: int = 320
    night: bool | None = None
    rgb_noise_std: float = 2.0
    night_rgb_noise_std: float = 6.0
    thermal_noise_std: float = 3.0
    thermal_fpn_std: float = 6.0
    thermal_misregistration_px: float | tuple[float, float] = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.height) < 64 or int(self.width) < 64:
            raise IVFIOError(
                f"scene size must be at least 64x64, got height={self.height}, width={self.width}"
            )
        for name in ("rgb_noise_std", "night_rgb_noise_std", "thermal_noise_std", "thermal_fpn_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise IVFIOError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.night not in (None, True, False):
            raise IVFIOError(f"night must be True, False or None (random), got {self.night!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise IVFIOError(f"seed must be a non-negative integer, got {self.seed!r}")
        _ = self.thermal_shift  # validates the misregistration

    @property
    def thermal_shift(self) -> tuple[float, float]:
        """Thermal misregistration as ``(dx, dy)`` pixels."""
        value = self.thermal_misregistration_px
        try:
            if isinstance(value, (int, float, np.integer, np.floating)):
                dx, dy = float(value), 0.0
            else:
                dx, dy = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise IVFIOError(
                f"thermal_misregistration_px must be a number or (dx, dy), got {value!r}"
            ) from exc
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise IVFIOError(f"thermal_misregistration_px must be finite, got {value!r}")
        return dx, dy


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated frame.

    Attributes:
        index: the scene index it was generated from.
        rgb: ``(H, W, 3)`` uint8 RGB.
        thermal: ``(H, W)`` uint8, percentile AGC (1/99 %) of ``thermal16``.
        thermal16: ``(H, W)`` uint16 raw counts (linear in temperature, ~35-60 counts/K).
        labels: ``(H, W)`` uint8 MFNet class ids, aligned with ``rgb``.
        is_night: whether the scene is lit as night.
        ambient_c: air temperature in degrees Celsius.
        thermal_shift: ``(dx, dy)`` applied to the thermal images.
    """

    index: int
    rgb: np.ndarray
    thermal: np.ndarray
    thermal16: np.ndarray
    labels: np.ndarray
    is_night: bool
    ambient_c: float
    thermal_shift: tuple[float, float] = (0.0, 0.0)


# ----------------------------------------------------------------------------------- drawing


def _fx(points: np.ndarray) -> list[np.ndarray]:
    """Points (N, 2) in float pixels -> the fixed-point int32 form cv2 wants with ``shift``.

    A 3-D array ``(P, N, 2)`` gives ``P`` polygons (drawn by one cv2 call).
    """
    arr = np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)
    if arr.ndim == 3:
        return list(arr)
    return [arr.reshape(-1, 1, 2)]


class _Canvas:
    """Albedo (RGB reflectance), emission, temperature and labels, drawn together."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.albedo = np.zeros((height, width, 3), np.float32)
        self.emissive = np.zeros((height, width, 3), np.float32)
        self.temp = np.zeros((height, width), np.float32)
        self.labels = np.zeros((height, width), np.uint8)

    def poly(self, pts: np.ndarray, colour: Sequence[float], temp: float | None,
             label: int | None = None) -> None:
        p = _fx(pts)
        cv2.fillPoly(self.albedo, p, tuple(float(c) for c in colour), cv2.LINE_8, _SHIFT)
        if temp is not None:
            cv2.fillPoly(self.temp, p, float(temp), cv2.LINE_8, _SHIFT)
        if label is not None:
            cv2.fillPoly(self.labels, p, int(label), cv2.LINE_8, _SHIFT)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Sequence[float],
             temp: float | None, label: int | None = None) -> None:
        self.poly(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), colour, temp, label)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, colour: Sequence[float],
                temp: float | None, label: int | None = None, thickness: int = -1,
                angle: float = 0.0) -> None:
        centre = (int(round(cx * _ONE)), int(round(cy * _ONE)))
        axes = (max(int(round(ax * _ONE)), _ONE // 2), max(int(round(ay * _ONE)), _ONE // 2))
        args = (centre, axes, angle, 0, 360)
        cv2.ellipse(self.albedo, *args, tuple(float(c) for c in colour), thickness, cv2.LINE_8, _SHIFT)
        if temp is not None:
            cv2.ellipse(self.temp, *args, float(temp), thickness, cv2.LINE_8, _SHIFT)
        if label is not None:
            cv2.ellipse(self.labels, *args, int(label), thickness, cv2.LINE_8, _SHIFT)

    def line(self, p0: Sequence[float], p1: Sequence[float], width: float,
             colour: Sequence[float], temp: float | None, label: int | None = None) -> None:
        """A thick segment as a polygon (cv2.line widths are integers and ignore sub-pixels)."""
        (x0, y0), (x1, y1) = p0, p1
        dx, dy = x1 - x0, y1 - y0
        norm = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / norm * width / 2, dx / norm * width / 2
        pts = np.array([[x0 + nx, y0 + ny], [x1 + nx, y1 + ny], [x1 - nx, y1 - ny], [x0 - nx, y0 - ny]])
        self.poly(pts, colour, temp, label)

    def glow(self, target: np.ndarray, cx: float, cy: float, sx: float, sy: float,
             amount: Sequence[float] | float) -> None:
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
            target[y0:y1, x0:x1] += blob * np.float32(amount)


@dataclass
class _Road:
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

    def y(self, t: np.ndarray | float) -> np.ndarray | float:
        return self.y_h + t * (self.height - self.y_h)

    def half(self, t: np.ndarray | float) -> np.ndarray | float:
        return self.h0 + (self.hb - self.h0) * t

    def x(self, t: np.ndarray | float, u: float) -> np.ndarray | float:
        return self.cb + (self.cf - self.cb) * (1.0 - np.minimum(t, 1.0)) ** 2 + u * self.half(t)

    def m2px(self, t: float) -> float:
        """Pixels per metre at depth ``t``."""
        return float(self.half(t)) / _HALF_ROAD_M

    def strip(self, u0: float, u1: float, t0: float, t1: float, n: int = 24) -> np.ndarray:
        """Polygon of the ground strip between lateral positions ``u0``/``u1`` and depths t0..t1."""
        ts = np.linspace(t0, t1, n)
        ys = self.y(ts)
        left = np.stack([self.x(ts, u0), ys], axis=1)
        right = np.stack([self.x(ts, u1), ys], axis=1)
        return np.concatenate([left, right[::-1]], axis=0)


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """Standard-normal quantiles at the 65536 mid-points of [0, 1] (an inverse-CDF table)."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((k + 0.5) / 65536.0) for k in range(65536)], np.float32)


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 noise via random 16-bit indices into :func:`_normal_table`.

    Why: ``Generator.standard_normal`` costs ~6 ms for one 320x240 RGB frame on our CI cores,
    a third of the scene budget; random bytes through a 65536-entry inverse-CDF table cost ~1 ms
    and are indistinguishable once rounded to 8-bit/16-bit sensor levels.
    """
    count = int(np.prod(shape))
    idx = np.frombuffer(rng.bytes(2 * count), dtype="<u2")
    return np.take(_normal_table(), idx).reshape(shape)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise (~unit std) by bicubic upsampling of a coarse random grid."""
    gh, gw = height // cell + 3, width // cell + 3
    grid = _gaussian(rng, (gh, gw))
    big = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
    oy, ox = cell, cell
    return big[oy:oy + height, ox:ox + width]


_CAR_COLOURS = np.array(
    [[0.75, 0.08, 0.06], [0.1, 0.2, 0.55], [0.88, 0.88, 0.86], [0.07, 0.07, 0.08],
     [0.55, 0.57, 0.6], [0.2, 0.35, 0.2], [0.8, 0.65, 0.1], [0.35, 0.22, 0.12]], np.float32)
_CLOTHES = np.array(
    [[0.1, 0.1, 0.12], [0.15, 0.2, 0.45], [0.55, 0.1, 0.1], [0.8, 0.78, 0.72], [0.25, 0.4, 0.25],
     [0.45, 0.35, 0.25], [0.6, 0.6, 0.62], [0.85, 0.55, 0.1], [0.2, 0.2, 0.3]], np.float32)
_SKIN = np.array([[0.87, 0.7, 0.58], [0.65, 0.47, 0.35], [0.42, 0.28, 0.2], [0.95, 0.8, 0.7]],
                 np.float32)


def _pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.05) -> np.ndarray:
    colour = table[rng.integers(len(table))] * rng.uniform(1 - jitter * 2, 1 + jitter * 2)
    return np.clip(colour + rng.normal(0, jitter, 3), 0.0, 1.0).astype(np.float32)


@dataclass
class _Env:
    """Per-scene physical state shared by the object painters."""

    rng: np.random.Generator
    canvas: _Canvas
    road: _Road
    night: bool
    ambient: float
    road_temp: float
    lights_on: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, size) pools


# --------------------------------------------------------------------------------- painters


def _paint_background(env: _Env) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    h, w = c.h, c.w
    yh = int(round(road.y_h))
    amb = env.ambient
    # sky: vertical gradient in colour and temperature (colder overhead)
    frac = (np.arange(yh, dtype=np.float32) / max(yh, 1))[:, None]
    if env.night:
        top, bottom = np.array([0.02, 0.025, 0.05]), np.array([0.08, 0.07, 0.08])
    else:
        top, bottom = np.array([0.3, 0.5, 0.88]), np.array([0.72, 0.8, 0.92])
    c.albedo[:yh] = (top + (bottom - top) * frac[:, :, None]).astype(np.float32)
    # clear sky is far colder than the air overhead, less so towards the horizon
    sky_cold = amb - rng.uniform(15.0, 25.0)
    c.temp[:yh] = sky_cold + frac * rng.uniform(5.0, 10.0)
    if rng.random() < 0.6:  # clouds (by day): brighter and warmer than clear sky
        cloud = np.clip(_smooth_noise(rng, yh, w, 24) - 0.3, 0.0, None)[:, :, None]
        if not env.night:
            c.albedo[:yh] += cloud * 0.35
            c.temp[:yh] += cloud[:, :, 0] * 12.0
    # ground: grass/dirt or pavement, sun-warmed by day
    ground = [0.24, 0.38, 0.16] if rng.random() < 0.5 else [0.5, 0.48, 0.44]
    c.albedo[yh:] = np.asarray(ground, np.float32) * rng.uniform(0.85, 1.15)
    c.temp[yh:] = amb + (rng.uniform(0.0, 4.0) if not env.night else rng.uniform(-1.0, 1.5))
    # skyline: buildings (lit windows at night) and trees standing on the horizon
    x = rng.uniform(-20, 0)
    while x < w:
        bw = rng.uniform(0.08, 0.22) * w
        if rng.random() < 0.7:
            top_y = road.y_h - rng.uniform(0.08, 0.3) * h
            grey = rng.uniform(0.4, 0.75)
            colour = grey * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.75, 0.95)])
            facade_t = amb + (rng.uniform(-1.0, 5.0) if not env.night else rng.uniform(2.0, 5.0))
            c.rect(x, top_y, x + bw, road.y_h + 2, colour, facade_t, UNLABELLED)
            win = max(2.0, bw / 8)
            wy, wx = np.meshgrid(np.arange(top_y + win, road.y_h - win, win * 2.2),
                                 np.arange(x + win * 0.8, x + bw - win, win * 2.0), indexing="ij")
            wy, wx = wy.ravel(), wx.ravel()
            quads = np.stack([np.stack([wx, wy], 1), np.stack([wx + win, wy], 1),
                              np.stack([wx + win, wy + win], 1), np.stack([wx, wy + win], 1)], 1)
            lit = rng.random(len(wx)) < (0.35 if env.night else 0.0)
            if (~lit).any():
                c.poly(quads[~lit], (0.12, 0.14, 0.18), facade_t - 1.0)
            if lit.any():  # lit windows: dark albedo, warm glass, light of their own
                c.poly(quads[lit], (0.0, 0.0, 0.0), facade_t + 3.0)
                cv2.fillPoly(c.emissive, _fx(quads[lit]), (0.55, 0.45, 0.25), cv2.LINE_8, _SHIFT)
        else:
            top_y = road.y_h - rng.uniform(0.06, 0.18) * h
            trunk_w = bw * 0.08
            c.rect(x + bw / 2 - trunk_w, (top_y + road.y_h) / 2, x + bw / 2 + trunk_w, road.y_h + 2,
                   (0.25, 0.18, 0.1), amb - 0.5, UNLABELLED)
            leaves = np.array([0.12, 0.32, 0.1]) * rng.uniform(0.7, 1.3)
            c.ellipse(x + bw / 2, top_y + (road.y_h - top_y) * 0.35, bw / 2, (road.y_h - top_y) * 0.4,
                      leaves, amb - rng.uniform(0.5, 2.0), UNLABELLED)
        x += bw + rng.uniform(0.0, 0.05) * w


def _paint_road(env: _Env, curbs: tuple[bool, bool]) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    asphalt = np.array([0.27, 0.27, 0.29], np.float32) * rng.uniform(0.8, 1.2)
    poly = road.strip(-1.0, 1.0, 0.0, 1.3)
    c.poly(poly, asphalt, env.road_temp, UNLABELLED)
    # asphalt texture: low-frequency patches in both albedo and temperature
    mask = np.zeros((c.h, c.w), np.float32)
    cv2.fillPoly(mask, _fx(poly), 1.0, cv2.LINE_8, _SHIFT)
    patches = _smooth_noise(rng, c.h, c.w, 12) * mask
    c.albedo *= (1.0 + 0.08 * patches)[:, :, None]
    c.temp += 0.8 * patches
    # dashed centre line and solid edge lines (paint: brighter, slightly colder)
    paint = (0.85, 0.85, 0.8)
    paint_t = env.road_temp - 1.5
    # dashes equally spaced in distance (distance ~ 1/t): dash k covers z in [z_k, z_k + 0.45]
    phase = rng.uniform(0.0, 1.0)
    for k in range(12):
        z = 0.75 + phase + 1.0 * k
        t_near, t_far = 1.0 / z, 1.0 / (z + 0.45)
        if t_far < 0.03:
            break
        c.poly(road.strip(-0.02, 0.02, t_far, min(t_near, 1.3), n=4), paint, paint_t)
    for side in (-1.0, 1.0):
        u0, u1 = sorted((side * 0.9, side * 0.93))
        c.poly(road.strip(u0, u1, 0.02, 1.3, n=16), paint, paint_t)
    # curbs (MFNet "curve"): raised concrete edge, lighter than asphalt, a little colder
    curb_colour = np.array([0.62, 0.61, 0.58], np.float32) * rng.uniform(0.9, 1.1)
    drop = rng.uniform(3.0, 6.0) if not env.night else rng.uniform(0.8, 2.0)
    for side, present in zip((-1.0, 1.0), curbs):
        if present:
            u0, u1 = sorted((side * 1.0, side * 1.09))
            c.poly(road.strip(u0, u1, 0.03, 1.3), curb_colour, env.road_temp - drop, CURVE)


def _paint_guardrail(env: _Env, side: float) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    u = side * rng.uniform(1.15, 1.3)
    t0, t1 = rng.uniform(0.04, 0.2), rng.uniform(0.75, 1.3)
    ts = np.linspace(t0, t1, 20)
    xs = road.x(ts, u)
    ys = road.y(ts)
    scale = np.array([road.m2px(t) for t in ts])
    metal = np.array([0.66, 0.68, 0.72], np.float32) * rng.uniform(0.85, 1.1)
    # low-emissivity metal reflects the cold sky: appears colder than the air
    rail_t = env.ambient - rng.uniform(2.0, 5.0)
    top = np.stack([xs, ys - 0.85 * scale], axis=1)
    bottom = np.stack([xs, ys - 0.5 * scale], axis=1)
    c.poly(np.concatenate([top, bottom[::-1]]), metal, rail_t, GUARDRAIL)
    # posts every ~2 m: distance ~ 1/t, so posts at t = 1/z
    for z in np.arange(1.0 / t1, 1.0 / t0, 0.6):
        t = 1.0 / z
        s = road.m2px(t)
        x, y = float(road.x(t, u)), float(road.y(t))
        c.rect(x - 0.07 * s, y - 0.85 * s, x + 0.07 * s, y, metal * 0.8, rail_t + 0.5, GUARDRAIL)


def _paint_bump(env: _Env) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    t = rng.uniform(0.45, 0.85)
    s = road.m2px(t)
    dt = 0.45 * s / (c.h - road.y_h)  # ~0.45 m deep seen at a grazing angle
    dt = max(dt, 3.0 / (c.h - road.y_h))
    band = road.strip(-1.0, 1.0, t, t + dt, n=4)
    bump_t = env.road_temp - rng.uniform(0.5, 2.5)
    c.poly(band, (0.85, 0.72, 0.08), bump_t, BUMP)
    n = 10
    for k in range(0, n, 2):  # black stripes
        u0, u1 = -1.0 + 2.0 * k / n, -1.0 + 2.0 * (k + 1) / n
        c.poly(road.strip(u0, u1, t, t + dt, n=2), (0.08, 0.08, 0.08), bump_t + 0.5, BUMP)


def _paint_car_stops(env: _Env) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    side = rng.choice([-1.0, 1.0])
    t = rng.uniform(0.45, 0.9)
    colour = (0.72, 0.71, 0.68) if rng.random() < 0.6 else (0.85, 0.75, 0.12)
    stop_t = env.road_temp - (rng.uniform(2.0, 5.0) if not env.night else rng.uniform(0.5, 1.5))
    for k in range(int(rng.integers(1, 4))):
        u = side * (1.35 + 0.7 * k)
        s = road.m2px(t)
        x, y = float(road.x(t, u)), float(road.y(t))
        half = 0.45 * s * 1.6 / 1.5
        height = max(0.18 * s, 3.0)
        c.rect(x - half, y - height, x + half, y, colour, stop_t, CAR_STOP)
        c.rect(x - half * 0.95, y - height, x + half * 0.95, y - height * 0.6,
               np.clip(np.asarray(colour) * 1.15, 0, 1), stop_t - 0.5, CAR_STOP)


def _paint_car(env: _Env, t: float, u: float) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    w, amb = 1.8 * s, env.ambient
    facing_us = bool(rng.random() < 0.4) if u < 0 else bool(rng.random() < 0.1)
    body = _pick(rng, _CAR_COLOURS)
    body_t = amb + (rng.uniform(3.0, 10.0) if not env.night else rng.uniform(1.0, 4.0))
    # shadow on the road (day) / dark patch under the car
    under = c.albedo[min(max(int(y), 0), c.h - 1), min(max(int(x), 0), c.w - 1)]
    c.ellipse(x, y - 0.05 * s, w * 0.6, 0.18 * s, under * 0.35, None)
    wheel_t = amb + rng.uniform(12.0, 25.0)
    for side in (-1, 1):
        c.rect(x + side * w * 0.42 - 0.15 * s, y - 0.5 * s, x + side * w * 0.42 + 0.15 * s, y,
               (0.04, 0.04, 0.04), wheel_t, CAR)
    c.rect(x - w / 2, y - 1.0 * s, x + w / 2, y - 0.28 * s, body, body_t, CAR)
    cabin = np.array([[x - w * 0.42, y - 1.0 * s], [x + w * 0.42, y - 1.0 * s],
                      [x + w * 0.33, y - 1.45 * s], [x - w * 0.33, y - 1.45 * s]])
    c.poly(cabin, body, body_t, CAR)
    glass = np.array([[x - w * 0.37, y - 1.03 * s], [x + w * 0.37, y - 1.03 * s],
                      [x + w * 0.3, y - 1.4 * s], [x - w * 0.3, y - 1.4 * s]])
    c.poly(glass, (0.08, 0.1, 0.13), amb - rng.uniform(2.0, 6.0), CAR)
    c.rect(x - 0.25 * s, y - 0.55 * s, x + 0.25 * s, y - 0.4 * s, (0.9, 0.9, 0.85), body_t, CAR)
    light_colour = (0.95, 0.93, 0.8) if facing_us else (0.8, 0.05, 0.04)
    lights_on = bool(rng.random() < 0.2) or env.night  # daytime running lights sometimes
    for side in (-1, 1):
        lx = x + side * w * 0.38
        c.rect(lx - 0.14 * s, y - 0.82 * s, lx + 0.14 * s, y - 0.68 * s, light_colour, body_t + 8.0, CAR)
        if lights_on:
            amount = np.asarray(light_colour, np.float32) * (2.0 if facing_us else 1.2)
            c.glow(c.emissive, lx, y - 0.75 * s, 0.2 * s + 0.5, 0.12 * s + 0.5, amount)
    if facing_us:  # engine under the hood (front): the hottest large area
        engine_t = amb + rng.uniform(20.0, 40.0)
        c.rect(x - w * 0.35, y - 0.7 * s, x + w * 0.35, y - 0.3 * s, body * 0.8, engine_t, CAR)
        if lights_on:  # light pool on the road in front of the car
            env.lights_on.append((x, y + 0.8 * s, 1.6 * s))
    else:  # exhaust pipe (rear): small and very hot
        ex = x - w * 0.3
        c.ellipse(ex, y - 0.3 * s, 0.08 * s, 0.05 * s, (0.1, 0.1, 0.1), amb + rng.uniform(35.0, 60.0), CAR)


def _paint_person(env: _Env, x: float, y: float, s: float, *, riding: bool = False) -> None:
    c, rng = env.canvas, env.rng
    height = rng.uniform(1.55, 1.9) * s
    amb = env.ambient
    skin_t = 33.5 + 0.05 * (amb - 20.0) + rng.uniform(-0.8, 0.8)
    cloth_t = amb + (skin_t - amb) * rng.uniform(0.45, 0.75)
    shirt, trousers, skin = _pick(rng, _CLOTHES), _pick(rng, _CLOTHES), _pick(rng, _SKIN, 0.03)
    hip_y = y - 0.47 * height
    if riding:
        hip_y = y
        y = y + 0.35 * height  # legs hang down to the pedals
    stride = 0.0 if riding else rng.uniform(0.0, 0.12) * height
    leg_w = 0.09 * height
    for side in (-1, 1):
        foot = x + side * (stride / 2 + leg_w * 0.3)
        c.line((x + side * leg_w * 0.5, hip_y), (foot, y), leg_w, trousers, cloth_t - 1.0, PERSON)
    torso_w = 0.24 * height
    shoulder_y = hip_y - 0.33 * height
    torso = np.array([[x - torso_w * 0.42, hip_y], [x + torso_w * 0.42, hip_y],
                      [x + torso_w / 2, shoulder_y], [x - torso_w / 2, shoulder_y]])
    c.poly(torso, shirt, cloth_t, PERSON)
    arm_w = 0.065 * height
    swing = rng.uniform(-0.08, 0.08) * height
    for side in (-1, 1):
        sx = x + side * (torso_w / 2 + arm_w * 0.3)
        hand = (sx + side * 0.02 * height + swing * side, hip_y + 0.02 * height)
        c.line((sx, shoulder_y + arm_w * 0.4), hand, arm_w, shirt, cloth_t, PERSON)
        c.ellipse(hand[0], hand[1] + 0.01 * height, arm_w * 0.5, arm_w * 0.6, skin, skin_t - 1.5, PERSON)
    head_r = 0.065 * height
    neck = (x - head_r * 0.4, shoulder_y - head_r * 0.6, x + head_r * 0.4, shoulder_y + 1)
    c.rect(*neck, skin, skin_t, PERSON)
    c.ellipse(x, shoulder_y - head_r * 1.35, head_r * 0.85, head_r, skin, skin_t + 0.5, PERSON)
    if rng.random() < 0.5:  # hair or a cap: colder than skin
        hair = _pick(rng, _CLOTHES)
        c.ellipse(x, shoulder_y - head_r * 1.9, head_r * 0.85, head_r * 0.5, hair, cloth_t + 1.0, PERSON)


def _paint_bike(env: _Env, t: float, u: float) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    direction = rng.choice([-1.0, 1.0])
    r = 0.34 * s
    base = env.ambient + rng.uniform(-1.5, 1.5)
    frame = _pick(rng, _CAR_COLOURS)
    tyre_w = max(0.05 * s, 1.0)
    rear, front = (x - direction * 0.52 * s, y - r), (x + direction * 0.52 * s, y - r)
    for cx, cy in (rear, front):
        c.ellipse(cx, cy, r, r, (0.05, 0.05, 0.05), base, BIKE, thickness=max(int(round(tyre_w)), 1))
    seat = (x - direction * 0.15 * s, y - 0.95 * s)
    bar = (x + direction * 0.42 * s, y - 1.05 * s)
    crank = (x, y - r)
    fw = max(0.045 * s, 1.0)
    for p0, p1 in ((rear, crank), (crank, seat), (seat, rear), (seat, bar), (crank, bar), (bar, front)):
        c.line(p0, p1, fw, frame, base + 0.5, BIKE)
    saddle = (seat[0] - 0.1 * s, seat[1] - 0.04 * s, seat[0] + 0.1 * s, seat[1] + 0.03 * s)
    c.rect(*saddle, (0.05, 0.05, 0.05), base, BIKE)
    if rng.random() < 0.6:  # a rider, labelled person, drawn over the bike
        _paint_person(env, seat[0], seat[1], s * 0.95, riding=True)


def _paint_cone(env: _Env, t: float, u: float, cone_t: float) -> None:
    c, road = env.canvas, env.road
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    c.rect(x - 0.22 * s, y - 0.06 * s, x + 0.22 * s, y, (0.1, 0.1, 0.1), cone_t, COLOR_CONE)
    cone = np.array([[x - 0.17 * s, y - 0.05 * s], [x + 0.17 * s, y - 0.05 * s], [x, y - 0.72 * s]])
    c.poly(cone, (1.0, 0.42, 0.05), cone_t, COLOR_CONE)
    band = np.array([[x - 0.11 * s, y - 0.3 * s], [x + 0.11 * s, y - 0.3 * s],
                     [x + 0.08 * s, y - 0.42 * s], [x - 0.08 * s, y - 0.42 * s]])
    c.poly(band, (0.95, 0.95, 0.95), cone_t - 0.3, COLOR_CONE)


# ------------------------------------------------------------------------------- generation


def _check_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise IVFIOError(f"scene index must be a non-negative integer, got {index!r}")
    return int(index)


def generate_scene(index: int, config: SceneConfig | None = None) -> Scene:
    """Generate scene number ``index`` (deterministic for a given index and config).

    Args:
        index: non-negative scene number.
        config: generation parameters; ``None`` uses :class:`SceneConfig` defaults.

    Returns:
        A :class:`Scene` (about 20 ms for 320x240 on one CI core).
    """
    cfg = SceneConfig() if config is None else config
    if not isinstance(cfg, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(cfg).__name__}")
    index = _check_index(index)
    rng = np.random.default_rng([int(cfg.seed), index])
    h, w = int(cfg.height), int(cfg.width)
    # always draw the coin, and draw the same numbers by day and night below, so forcing
    # ``night`` changes the lighting and temperatures of a scene but not its layout or labels
    coin = rng.random()
    night = bool(coin < 0.5) if cfg.night is None else bool(cfg.night)
    ambient = float(rng.uniform(0.0, 12.0) if night else rng.uniform(14.0, 28.0))
    road_temp = ambient + float(rng.uniform(2.0, 5.0) if night else rng.uniform(3.0, 10.0))
    y_h = h * rng.uniform(0.36, 0.46)
    road = _Road(
        y_h=float(y_h), height=h,
        cb=w * (0.5 + rng.uniform(-0.08, 0.08)),
        cf=w * (0.5 + rng.uniform(-0.3, 0.3)),
        hb=w * rng.uniform(0.32, 0.45),
        h0=w * 0.006,
    )
    canvas = _Canvas(h, w)
    env = _Env(rng, canvas, road, night, ambient, road_temp)

    _paint_background(env)
    curbs = (bool(rng.random() < 0.85), bool(rng.random() < 0.85))
    _paint_road(env, curbs)
    if rng.random() < 0.55:
        _paint_guardrail(env, float(rng.choice([-1.0, 1.0])))
    if rng.random() < 0.45:
        _paint_bump(env)
    if rng.random() < 0.45:
        _paint_car_stops(env)

    # upright objects, painted far to near (small t first) so nearer ones occlude
    objects: list[tuple[float, str, float]] = []
    if rng.random() < 0.9:
        for _ in range(int(rng.integers(1, 4))):
            lane = rng.choice([-0.5, 0.5]) + rng.uniform(-0.12, 0.12)
            objects.append((float(rng.uniform(0.2, 0.85)), "car", float(lane)))
    if rng.random() < 0.85:
        for _ in range(int(rng.integers(1, 4))):
            on_road = rng.random() < 0.3
            u = rng.uniform(-0.8, 0.8) if on_road else rng.choice([-1.0, 1.0]) * rng.uniform(1.15, 1.5)
            objects.append((float(rng.uniform(0.25, 0.95)), "person", float(u)))
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 3))):
            u = rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.3)
            objects.append((float(rng.uniform(0.3, 0.9)), "bike", float(u)))
    if rng.random() < 0.5:  # a row of cones along one road edge, ~1 m apart
        u = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.55, 0.95))
        z0 = 1.0 / rng.uniform(0.55, 0.95)
        for k in range(int(rng.integers(2, 6))):
            objects.append((1.0 / (z0 + 0.35 * k), "cone", u))
    cone_t = road_temp - float(rng.uniform(1.0, 4.0) if not night else rng.uniform(1.0, 3.0))
    objects.sort(key=lambda item: item[0])
    for t, kind, u in objects:
        if kind == "car":
            _paint_car(env, t, u)
        elif kind == "person":
            _paint_person(env, float(road.x(t, u)), float(road.y(t)), road.m2px(t))
        elif kind == "bike":
            _paint_bike(env, t, u)
        else:
            _paint_cone(env, t, u, cone_t)

    rgb = _render_rgb(env, cfg)
    thermal16 = _render_thermal(env, cfg)
    thermal = np.rint(agc_percentile(thermal16, 1.0, 99.0) * 255.0).astype(np.uint8)
    return Scene(
        index=index,
        rgb=rgb,
        thermal=thermal,
        thermal16=thermal16,
        labels=canvas.labels,
        is_night=night,
        ambient_c=ambient,
        thermal_shift=cfg.thermal_shift,
    )


def _render_rgb(env: _Env, cfg: SceneConfig) -> np.ndarray:
    c, road, rng = env.canvas, env.road, env.rng
    if env.night:
        light = np.full((c.h, c.w), rng.uniform(0.05, 0.1), np.float32)
        # ego headlights: a pool on the road ahead of the camera
        near = (float(road.x(0.9, 0.0)), float(road.y(0.9)))
        far = (float(road.x(0.6, 0.0)), float(road.y(0.6)))
        c.glow(light, *near, 0.45 * road.hb, 0.18 * c.h, rng.uniform(0.7, 1.1))
        c.glow(light, *far, 0.3 * road.hb, 0.08 * c.h, rng.uniform(0.3, 0.5))
        # street lamps along one side
        side = rng.choice([-1.0, 1.0])
        for k in range(int(rng.integers(1, 4))):
            t = 1.0 / (1.2 + 1.1 * k)
            s = road.m2px(t)
            x, y = float(road.x(t, side * 1.35)), float(road.y(t))
            c.glow(light, x, y, 3.0 * s, 1.2 * s, rng.uniform(0.4, 0.8))
            c.line((x, y), (x, y - 5.0 * s), max(0.12 * s, 1.0), (0.2, 0.2, 0.2), env.ambient - 1.0)
            c.glow(c.emissive, x, y - 5.0 * s, 0.35 * s + 0.7, 0.2 * s + 0.7, (2.5, 2.2, 1.5))
        for x, y, size in env.lights_on:  # oncoming cars' headlight pools
            c.glow(light, x, y, size, 0.5 * size, rng.uniform(0.5, 0.9))
        noise_std = cfg.night_rgb_noise_std
    else:
        light = np.full((c.h, c.w), rng.uniform(0.85, 1.1), np.float32)
        noise_std = cfg.rgb_noise_std
    img = c.albedo * light[:, :, None]
    img += c.emissive
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img *= 255.0
    if noise_std > 0:
        img += _gaussian(rng, img.shape) * np.float32(noise_std)
    img += 0.5  # round half up by truncation after clipping
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def _render_thermal(env: _Env, cfg: SceneConfig) -> np.ndarray:
    c, rng = env.canvas, env.rng
    temp = c.temp + _smooth_noise(rng, c.h, c.w, 16) * np.float32(0.4)
    temp = cv2.GaussianBlur(temp, (0, 0), 1.0)  # LWIR optics are softer than RGB
    dx, dy = cfg.thermal_shift
    if dx or dy:
        shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float64)
        temp = cv2.warpAffine(
            temp, shift, (c.w, c.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    gain = rng.uniform(35.0, 60.0)  # counts per kelvin
    counts = np.float32(8192.0) + (temp - np.float32(20.0)) * np.float32(gain)
    if cfg.thermal_fpn_std > 0:  # column fixed pattern: a sensor property, not shifted
        counts += _gaussian(rng, (1, c.w)) * np.float32(cfg.thermal_fpn_std)
    if cfg.thermal_noise_std > 0:
        counts += _gaussian(rng, counts.shape) * np.float32(cfg.thermal_noise_std)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def iter_scenes(count: int, config: SceneConfig | None = None, start: int = 0) -> Iterator[Scene]:
    """Generate scenes ``start .. start + count - 1`` lazily."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise IVFIOError(f"count must be a non-negative integer, got {count!r}")
    start = _check_index(start)
    for index in range(start, start + int(count)):
        yield generate_scene(index, config)


# ---------------------------------------------------------------------------------- writers


def scene_stamp_ns(index: int, fps: float = 10.0) -> int:
    """Header stamp of scene ``index`` at ``fps`` (shared by the folder and bag writers)."""
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise IVFIOError(f"fps must be a positive number, got {fps!r}")
    return BASE_STAMP_NS + int(round(_check_index(index) * 1e9 / fps))


def _thermal_jitter_ns(config: SceneConfig, index: int, jitter_ns: int) -> int:
    """Deterministic per-frame thermal stamp offset in ``[-jitter_ns, jitter_ns]``."""
    if jitter_ns == 0:
        return 0
    rng = np.random.default_rng([int(config.seed), int(index), 0x7E])  # independent of the scene
    return int(rng.integers(-jitter_ns, jitter_ns + 1))


def write_scene_folder(
    out_dir: str | os.PathLike[str],
    count: int,
    config: SceneConfig | None = None,
    start: int = 0,
    *,
    fps: float = 10.0,
    thermal_bits: int = 8,
) -> Path:
    """Write scenes in the project's generic folder layout.

    Layout: ``vi/NAME.png`` (RGB), ``ir/NAME.png`` (gray; 8-bit AGC output, or raw 16-bit
    counts with ``thermal_bits=16``), ``labels/NAME.png`` (class ids), with ``NAME`` the
    zero-padded index (``000000``), plus ``index.json`` holding the configuration, class names,
    palette and per-frame ``name``, ``index``, ``is_night`` and ``stamp_ns``.

    Returns:
        ``out_dir`` as a Path.
    """
    cfg = SceneConfig() if config is None else config
    if thermal_bits not in (8, 16):
        raise IVFIOError(f"thermal_bits must be 8 or 16, got {thermal_bits!r}")
    root = Path(out_dir)
    frames = []
    for scene in iter_scenes(count, cfg, start):
        name = f"{scene.index:06d}"
        write_png(root / "vi" / f"{name}.png", scene.rgb)
        write_png(root / "ir" / f"{name}.png", scene.thermal if thermal_bits == 8 else scene.thermal16)
        write_png(root / "labels" / f"{name}.png", scene.labels)
        frames.append({
            "name": name,
            "index": scene.index,
            "is_night": scene.is_night,
            "stamp_ns": scene_stamp_ns(scene.index, fps),
        })
    meta = {
        "generator": "ivf_perception.io.synthetic",
        "config": dataclasses.asdict(cfg),
        "fps": fps,
        "thermal_bits": thermal_bits,
        "classes": list(MFNET_CLASSES),
        "palette": list(MFNET_PALETTE),
        "frames": frames,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def write_scene_bag(
    path: str | os.PathLike[str],
    count: int,
    config: SceneConfig | None = None,
    fps: float = 10.0,
    storage: str = "mcap",
    rgb_topic: str = "/camera/rgb/image",
    thermal_topic: str = "/camera/thermal/image",
    label_topic: str | None = "/camera/rgb/labels",
    thermal_encoding: str = "mono8",
    jitter_ns: int = 3_000_000,
    *,
    start: int = 0,
    rgb_frame_id: str = "camera_rgb_optical_frame",
    thermal_frame_id: str = "camera_thermal_optical_frame",
    distro: str = "kilted",
    overwrite: bool = False,
) -> Path:
    """Write scenes as a rosbag2 with RGB, thermal and (optionally) label image topics.

    RGB (``rgb8``) and labels (``mono8`` class ids, RGB frame) carry :func:`scene_stamp_ns`;
    thermal (``mono8`` AGC output or ``mono16`` raw counts) is stamped with a deterministic
    per-frame offset in ``[-jitter_ns, jitter_ns]`` so approximate-time pairing is exercised.
    Record times equal header stamps; messages are written in time order. ``overwrite``
    replaces an existing bag folder (see :func:`~ivf_perception.io.bag.write_image_bag`).

    Raises:
        IVFIOError: bad fps, encoding or a jitter of half a frame period or more.
        BagError: the bag path exists (without ``overwrite``) or the storage is unknown.
    """
    cfg = SceneConfig() if config is None else config
    if thermal_encoding not in ("mono8", "mono16"):
        raise IVFIOError(f"thermal_encoding must be 'mono8' or 'mono16', got {thermal_encoding!r}")
    period_ns = 1e9 / fps if isinstance(fps, (int, float)) and fps > 0 else 0
    scene_stamp_ns(0, fps)  # validates fps
    if isinstance(jitter_ns, bool) or not isinstance(jitter_ns, (int, np.integer)) or not (
        0 <= jitter_ns < period_ns / 2
    ):
        raise IVFIOError(
            f"jitter_ns must be an integer in [0, period/2) = [0, {int(period_ns // 2)}) at "
            f"{fps} fps, got {jitter_ns!r}"
        )

    def frames() -> Iterator[BagFrame]:
        for scene in iter_scenes(count, cfg, start):
            stamp = scene_stamp_ns(scene.index, fps)
            th_stamp = stamp + _thermal_jitter_ns(cfg, scene.index, int(jitter_ns))
            th = scene.thermal if thermal_encoding == "mono8" else scene.thermal16
            batch = [
                BagFrame(rgb_topic, stamp, rgb_frame_id, scene.rgb, "rgb8"),
                BagFrame(thermal_topic, th_stamp, thermal_frame_id, th, thermal_encoding),
            ]
            if label_topic:
                batch.append(BagFrame(label_topic, stamp, rgb_frame_id, scene.labels, "mono8"))
            yield from sorted(batch, key=lambda f: f.stamp_ns)

    return write_image_bag(path, frames(), storage=storage, distro=distro, overwrite=overwrite)
