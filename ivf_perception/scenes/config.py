"""What a generated scene is, and the settings it is drawn with.

The class ids are MFNet's (``ivf_perception.io.classes``), named here because the painters label
every object with one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ivf_perception.io.errors import IVFIOError

__all__ = [
    "SceneConfig",
    "VARIETY",
    "VARIETY_FIELDS",
    "Scene",
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
        night_glare: strength of the halos (lens bloom) around lamps, headlights and lit windows
            in night RGB, a gain on the sources' light spread wide (1.0: strong, saturating
            halos). 0 = off. Day scenes are unaffected.
        thermal_crossover: in [0, 1], how far every labelled object's temperature is pulled
            toward the ground's mean temperature (dawn/dusk crossover, when objects and
            background read alike in LWIR). 0 = off, 1 = no object/background contrast left.
        vignetting: in [0, 1), how much darker the RGB image's corners are than its centre
            (radial, quadratic falloff applied before sensor noise). 0 = off.
        misregistration_jitter_px: per scene, an extra thermal shift drawn uniformly in
            ``[-j, j]`` for ``dx`` and ``dy`` on top of ``thermal_misregistration_px`` (rigs
            whose calibration drifts). 0 = off.
        seed: base seed; scene ``i`` uses ``default_rng([seed, i])``. The variety options draw
            from their own ``default_rng([seed, i, 0x5A])`` so turning one on changes its effect
            only, never a scene's layout, lighting or noise.

    Sensor noise is ``rgb_noise_std``/``night_rgb_noise_std``/``thermal_noise_std``/
    ``thermal_fpn_std``. The variety options default to off so scenes generated before they
    existed (and the golden hashes that pin them) are unchanged; :data:`VARIETY` turns them all on.
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
    night_glare: float = 0.0
    thermal_crossover: float = 0.0
    vignetting: float = 0.0
    misregistration_jitter_px: float = 0.0

    def __post_init__(self) -> None:
        if int(self.height) < 64 or int(self.width) < 64:
            raise IVFIOError(
                f"scene size must be at least 64x64, got height={self.height}, width={self.width}"
            )
        for name in ("rgb_noise_std", "night_rgb_noise_std", "thermal_noise_std", "thermal_fpn_std",
                     "night_glare", "misregistration_jitter_px"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise IVFIOError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.night not in (None, True, False):
            raise IVFIOError(f"night must be True, False or None (random), got {self.night!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise IVFIOError(f"seed must be a non-negative integer, got {self.seed!r}")
        _ = self.thermal_shift  # validates the misregistration
        for name, top in (("thermal_crossover", 1.0), ("vignetting", 0.999)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= top):
                raise IVFIOError(f"{name} must be a number in [0, {top:g}], got {value!r}")

    def as_record(self) -> dict[str, Any]:
        """The settings for a dataset's ``index.json``: variety options only when turned on.

        Why: folders written before the variety options existed must stay byte-identical
        (their hashes are pinned), and an option that is off did nothing to the scenes.
        """
        record = dataclasses.asdict(self)
        for name in VARIETY_FIELDS:
            if not record[name]:
                del record[name]
        return record

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


VARIETY_FIELDS = ("night_glare", "thermal_crossover", "vignetting", "misregistration_jitter_px")
"""The opt-in options that give generated scenes the variety of real pairs (issue 18, part 1)."""

VARIETY: dict[str, float] = {"night_glare": 0.7, "thermal_crossover": 0.5, "vignetting": 0.3,
                             "misregistration_jitter_px": 2.0}
"""One setting of all of them, a moderate amount each: ``SceneConfig(**VARIETY)``, ``generate
--variety`` or a recipe's ``scene:`` mapping."""


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
