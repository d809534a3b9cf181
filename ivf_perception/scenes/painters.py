"""The painters: each draws one kind of surface or object into a scene's :class:`~.canvas.Canvas`.

Every painter writes albedo, temperature and label together, and draws from the scene's one
random generator in a fixed order (which is what keeps a scene identical for its index). The
physics they encode: by night people and cars stay warm while RGB goes dark; by day cones,
bumps, car stops, curbs, guardrails and bikes sit close to the road's temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ivf_perception.scenes.canvas import SHIFT, Canvas, Road, fx
from ivf_perception.scenes.config import (
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    COLOR_CONE,
    CURVE,
    GUARDRAIL,
    PERSON,
    UNLABELLED,
)
from ivf_perception.scenes.noise import smooth_noise

__all__ = [
    "Env",
    "paint_background",
    "paint_bike",
    "paint_bump",
    "paint_car",
    "paint_car_stops",
    "paint_cone",
    "paint_guardrail",
    "paint_person",
    "paint_road",
]


_CAR_COLOURS = np.array(
    [[0.75, 0.08, 0.06], [0.1, 0.2, 0.55], [0.88, 0.88, 0.86], [0.07, 0.07, 0.08],
     [0.55, 0.57, 0.6], [0.2, 0.35, 0.2], [0.8, 0.65, 0.1], [0.35, 0.22, 0.12]], np.float32)
_CLOTHES = np.array(
    [[0.1, 0.1, 0.12], [0.15, 0.2, 0.45], [0.55, 0.1, 0.1], [0.8, 0.78, 0.72], [0.25, 0.4, 0.25],
     [0.45, 0.35, 0.25], [0.6, 0.6, 0.62], [0.85, 0.55, 0.1], [0.2, 0.2, 0.3]], np.float32)
_SKIN = np.array([[0.87, 0.7, 0.58], [0.65, 0.47, 0.35], [0.42, 0.28, 0.2], [0.95, 0.8, 0.7]],
                 np.float32)


def pick(rng: np.random.Generator, table: np.ndarray, jitter: float = 0.05) -> np.ndarray:
    colour = table[rng.integers(len(table))] * rng.uniform(1 - jitter * 2, 1 + jitter * 2)
    return np.clip(colour + rng.normal(0, jitter, 3), 0.0, 1.0).astype(np.float32)


@dataclass
class Env:
    """Per-scene physical state shared by the object painters."""

    rng: np.random.Generator
    canvas: Canvas
    road: Road
    night: bool
    ambient: float
    road_temp: float
    lights_on: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, size) pools


def paint_background(env: Env) -> None:
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
        cloud = np.clip(smooth_noise(rng, yh, w, 24) - 0.3, 0.0, None)[:, :, None]
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
                cv2.fillPoly(c.emissive, fx(quads[lit]), (0.55, 0.45, 0.25), cv2.LINE_8, SHIFT)
        else:
            top_y = road.y_h - rng.uniform(0.06, 0.18) * h
            trunk_w = bw * 0.08
            c.rect(x + bw / 2 - trunk_w, (top_y + road.y_h) / 2, x + bw / 2 + trunk_w, road.y_h + 2,
                   (0.25, 0.18, 0.1), amb - 0.5, UNLABELLED)
            leaves = np.array([0.12, 0.32, 0.1]) * rng.uniform(0.7, 1.3)
            c.ellipse(x + bw / 2, top_y + (road.y_h - top_y) * 0.35, bw / 2, (road.y_h - top_y) * 0.4,
                      leaves, amb - rng.uniform(0.5, 2.0), UNLABELLED)
        x += bw + rng.uniform(0.0, 0.05) * w


def paint_road(env: Env, curbs: tuple[bool, bool]) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    asphalt = np.array([0.27, 0.27, 0.29], np.float32) * rng.uniform(0.8, 1.2)
    poly = road.strip(-1.0, 1.0, 0.0, 1.3)
    c.poly(poly, asphalt, env.road_temp, UNLABELLED)
    # asphalt texture: low-frequency patches in both albedo and temperature
    mask = np.zeros((c.h, c.w), np.float32)
    cv2.fillPoly(mask, fx(poly), 1.0, cv2.LINE_8, SHIFT)
    patches = smooth_noise(rng, c.h, c.w, 12) * mask
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


def paint_guardrail(env: Env, side: float) -> None:
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


def paint_bump(env: Env) -> None:
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


def paint_car_stops(env: Env) -> None:
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


def paint_car(env: Env, t: float, u: float) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    w, amb = 1.8 * s, env.ambient
    facing_us = bool(rng.random() < 0.4) if u < 0 else bool(rng.random() < 0.1)
    body = pick(rng, _CAR_COLOURS)
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


def paint_person(env: Env, x: float, y: float, s: float, *, riding: bool = False) -> None:
    c, rng = env.canvas, env.rng
    height = rng.uniform(1.55, 1.9) * s
    amb = env.ambient
    skin_t = 33.5 + 0.05 * (amb - 20.0) + rng.uniform(-0.8, 0.8)
    cloth_t = amb + (skin_t - amb) * rng.uniform(0.45, 0.75)
    shirt, trousers, skin = pick(rng, _CLOTHES), pick(rng, _CLOTHES), pick(rng, _SKIN, 0.03)
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
        hair = pick(rng, _CLOTHES)
        c.ellipse(x, shoulder_y - head_r * 1.9, head_r * 0.85, head_r * 0.5, hair, cloth_t + 1.0, PERSON)


def paint_bike(env: Env, t: float, u: float) -> None:
    c, road, rng = env.canvas, env.road, env.rng
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    direction = rng.choice([-1.0, 1.0])
    r = 0.34 * s
    base = env.ambient + rng.uniform(-1.5, 1.5)
    frame = pick(rng, _CAR_COLOURS)
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
        paint_person(env, seat[0], seat[1], s * 0.95, riding=True)


def paint_cone(env: Env, t: float, u: float, cone_t: float) -> None:
    c, road = env.canvas, env.road
    s = road.m2px(t)
    x, y = float(road.x(t, u)), float(road.y(t))
    c.rect(x - 0.22 * s, y - 0.06 * s, x + 0.22 * s, y, (0.1, 0.1, 0.1), cone_t, COLOR_CONE)
    cone = np.array([[x - 0.17 * s, y - 0.05 * s], [x + 0.17 * s, y - 0.05 * s], [x, y - 0.72 * s]])
    c.poly(cone, (1.0, 0.42, 0.05), cone_t, COLOR_CONE)
    band = np.array([[x - 0.11 * s, y - 0.3 * s], [x + 0.11 * s, y - 0.3 * s],
                     [x + 0.08 * s, y - 0.42 * s], [x - 0.08 * s, y - 0.42 * s]])
    c.poly(band, (0.95, 0.95, 0.95), cone_t - 0.3, COLOR_CONE)
