"""The sensor models: turn a painted scene into an RGB image and raw 16-bit thermal counts.

RGB: ambient or night lighting (headlights, street lamps, oncoming cars), optional night glare,
slight blur, optional vignetting, sensor noise. Thermal: optional thermal crossover, temperature
texture, softer LWIR optics, optional misregistration, a per-frame gain in counts per kelvin,
column fixed-pattern and temporal noise. The optional effects draw no random numbers, so each
leaves the rest of a scene exactly as it was.
"""

from __future__ import annotations

import cv2
import numpy as np

from ivf_perception.scenes.config import UNLABELLED, SceneConfig
from ivf_perception.scenes.noise import gaussian, smooth_noise
from ivf_perception.scenes.painters import Env

__all__ = ["render_rgb", "render_thermal", "glare_halo", "vignette", "crossover_temperature"]

GLARE_SIGMAS = (0.012, 0.045)
"""Halo widths as fractions of the image width: a tight bloom and a wide veil, as a wet or dirty
lens at night shows around every bright source."""
GLARE_GAINS = (1.2, 3.0)
"""Per-width gains, chosen by eye on night scenes: at ``night_glare`` 1 a street lamp's halo
saturates a few lamp-widths around it and a headlight's spreads over its car."""


def glare_halo(emissive: np.ndarray, strength: float) -> np.ndarray:
    """The light of the bright sources (``emissive``) spread around them, times ``strength``."""
    width = emissive.shape[1]
    halo = np.zeros_like(emissive)
    for frac, gain in zip(GLARE_SIGMAS, GLARE_GAINS, strict=True):
        halo += cv2.GaussianBlur(emissive, (0, 0), frac * width) * np.float32(gain * strength)
    return halo


def vignette(height: int, width: int, amount: float) -> np.ndarray:
    """Per-pixel gain ``1 - amount * (r / r_corner)^2``: 1 at the centre, ``1 - amount`` at the corners."""
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2.0) / ((height - 1) / 2.0)
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2.0) / ((width - 1) / 2.0)
    r2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0  # 1 at the corners
    return np.float32(1.0) - np.float32(amount) * r2


def crossover_temperature(env: Env, amount: float) -> np.ndarray:
    """Every labelled pixel's temperature pulled ``amount`` of the way to the ground's mean.

    The ground is the unlabelled part below the horizon (road, verge, buildings' feet): what an
    object is seen against in a street scene.
    """
    c = env.canvas
    objects = c.labels != UNLABELLED
    ground = ~objects
    ground[: int(env.road.y_h)] = False
    temp = c.temp.copy()
    if objects.any() and ground.any():
        level = np.float32(c.temp[ground].mean())
        temp[objects] += np.float32(amount) * (level - temp[objects])
    return temp


def render_rgb(env: Env, cfg: SceneConfig) -> np.ndarray:
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
    lit = c.albedo * light[:, :, None]
    lit += c.emissive
    if env.night and cfg.night_glare > 0:
        lit += glare_halo(c.emissive, cfg.night_glare)
    img: np.ndarray = cv2.GaussianBlur(lit, (0, 0), 0.6)
    img *= 255.0
    if cfg.vignetting > 0:  # optics, so before the sensor's noise
        img *= vignette(c.h, c.w, cfg.vignetting)[:, :, None]
    if noise_std > 0:
        img += gaussian(rng, img.shape) * np.float32(noise_std)
    img += 0.5  # round half up by truncation after clipping
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def render_thermal(env: Env, cfg: SceneConfig, shift: tuple[float, float]) -> np.ndarray:
    """Raw counts; ``shift`` is the scene's ``(dx, dy)`` misregistration (config plus jitter)."""
    c, rng = env.canvas, env.rng
    base = crossover_temperature(env, cfg.thermal_crossover) if cfg.thermal_crossover > 0 else c.temp
    textured = base + smooth_noise(rng, c.h, c.w, 16) * np.float32(0.4)
    temp: np.ndarray = cv2.GaussianBlur(textured, (0, 0), 1.0)  # LWIR optics are softer than RGB
    dx, dy = shift
    if dx or dy:
        matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float64)
        temp = cv2.warpAffine(
            temp, matrix, (c.w, c.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    gain = rng.uniform(35.0, 60.0)  # counts per kelvin
    counts = np.float32(8192.0) + (temp - np.float32(20.0)) * np.float32(gain)
    if cfg.thermal_fpn_std > 0:  # column fixed pattern: a sensor property, not shifted
        counts += gaussian(rng, (1, c.w)) * np.float32(cfg.thermal_fpn_std)
    if cfg.thermal_noise_std > 0:
        counts += gaussian(rng, counts.shape) * np.float32(cfg.thermal_noise_std)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
