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

Modules: :mod:`.config` (what a scene is and how it is drawn), :mod:`.canvas` and :mod:`.noise`
(drawing primitives, the road's perspective, noise), :mod:`.painters` (the objects, each drawn in
albedo, temperature and labels at once), :mod:`.cameras` (the RGB and thermal sensor models),
:mod:`.compose` (one scene from its index) and :mod:`.writers` (image folders and rosbag2 bags).
Scenes are data, not I/O: they use :mod:`ivf_perception.io` only to write files and bags and for
the thermal AGC.

Everything random comes from ``numpy.random.default_rng([seed, index])`` (the opt-in variety's
misregistration jitter and the bag writer's stamp jitter from their own ``[seed, index, tag]``
generators): the same index and configuration always give the same scene, on any machine,
independently of other indices. The variety options (``SceneConfig`` ``night_glare``,
``thermal_crossover``, ``vignetting``, ``misregistration_jitter_px``; :data:`VARIETY`) are off by
default.
"""

from ivf_perception.scenes.compose import generate_scene, iter_scenes
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
    VARIETY,
    Scene,
    SceneConfig,
)
from ivf_perception.scenes.writers import BASE_STAMP_NS, scene_stamp_ns, write_scene_bag, write_scene_folder

__all__ = [
    "SceneConfig",
    "VARIETY",
    "Scene",
    "generate_scene",
    "iter_scenes",
    "BASE_STAMP_NS",
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
