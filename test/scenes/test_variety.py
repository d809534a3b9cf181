"""Opt-in scene variety (issue 18, part 1): night glare, thermal crossover, vignetting, misregistration jitter.

Each option is checked for its effect against the same scene without it. The options draw no
numbers from the scene's generator, so "everything else unchanged" is asserted exactly; the
defaults staying off (byte-identical output) is what ``test_golden_output.py`` pins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ivf_perception.cli import generate
from ivf_perception.io.errors import IVFIOError
from ivf_perception.scenes import UNLABELLED, VARIETY, SceneConfig, generate_scene, write_scene_folder
from ivf_perception.scenes.cameras import crossover_temperature, vignette
from ivf_perception.scenes.canvas import Canvas, Road
from ivf_perception.scenes.painters import Env

QUIET_THERMAL = {"thermal_noise_std": 0.0, "thermal_fpn_std": 0.0}


def test_night_glare_brightens_around_lights_only_at_night() -> None:
    base = generate_scene(0, SceneConfig(night=True, seed=3))
    glare = generate_scene(0, SceneConfig(night=True, seed=3, night_glare=1.0))
    diff = glare.rgb.astype(int) - base.rgb.astype(int)
    assert diff.min() >= 0  # light is only added (the same noise draws, clipping is monotone)
    assert (diff.max(axis=2) > 20).mean() > 0.05  # visible halos
    assert glare.rgb.mean() > base.rgb.mean() + 5
    for a, b in ((glare.thermal16, base.thermal16), (glare.labels, base.labels)):
        np.testing.assert_array_equal(a, b)
    day = SceneConfig(night=False, seed=3)
    np.testing.assert_array_equal(generate_scene(0, SceneConfig(night=False, seed=3, night_glare=1.0)).rgb,
                                  generate_scene(0, day).rgb)


def test_vignetting_darkens_corners_by_the_set_factor() -> None:
    gain = vignette(240, 320, 0.3)
    assert gain[0, 0] == pytest.approx(0.7) and gain[-1, -1] == pytest.approx(0.7)
    assert gain[119:121, 159:161].min() > 0.999
    quiet = {"rgb_noise_std": 0.0, "night": False, "seed": 4}
    base = generate_scene(1, SceneConfig(**quiet)).rgb.astype(float)
    dark = generate_scene(1, SceneConfig(vignetting=0.3, **quiet)).rgb.astype(float)
    corners = [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(-3, None)),
               (slice(-3, None), slice(0, 3)), (slice(-3, None), slice(-3, None))]
    for rows, cols in corners:
        ratio = dark[rows, cols].sum() / base[rows, cols].sum()
        assert ratio == pytest.approx(0.7, abs=0.02)
    assert np.abs(dark[118:122, 158:162] - base[118:122, 158:162]).max() <= 1  # the centre keeps its level


def _contrast(thermal16: np.ndarray, labels: np.ndarray) -> float:
    """Mean object counts minus mean ground counts (ground: unlabelled, lower half: below any horizon)."""
    objects = labels != UNLABELLED
    ground = ~objects
    ground[: labels.shape[0] // 2] = False
    return float(thermal16[objects].mean() - thermal16[ground].mean())


def test_crossover_pulls_objects_to_the_ground_temperature() -> None:
    # unit: on a painted canvas the object/ground contrast shrinks by exactly (1 - amount)
    canvas = Canvas(64, 64)
    canvas.temp[:] = 10.0
    canvas.temp[40:50, 20:30] = 30.0
    canvas.labels[40:50, 20:30] = 2
    env = Env(np.random.default_rng(0), canvas, Road(16.0, 64, 32.0, 32.0, 20.0, 0.5), False, 10.0, 12.0)
    temp = crossover_temperature(env, 0.75)
    ground = np.ones((64, 64), bool)
    ground[:16] = False
    ground[40:50, 20:30] = False
    assert temp[40:50, 20:30] == pytest.approx(10.0 + 0.25 * 20.0)
    np.testing.assert_array_equal(temp[ground], canvas.temp[ground])
    # end to end: the rendered counts lose most of their object/ground contrast, labels and RGB stay
    checked = 0
    for index in range(4):
        base = generate_scene(index, SceneConfig(seed=3, **QUIET_THERMAL))
        cross = generate_scene(index, SceneConfig(seed=3, thermal_crossover=0.8, **QUIET_THERMAL))
        np.testing.assert_array_equal(cross.rgb, base.rgb)
        np.testing.assert_array_equal(cross.labels, base.labels)
        before = _contrast(base.thermal16, base.labels)
        if abs(before) < 50:
            continue
        assert abs(_contrast(cross.thermal16, cross.labels)) < 0.4 * abs(before)
        checked += 1
    assert checked >= 2


def test_misregistration_jitter_is_seeded_and_bounded() -> None:
    config = SceneConfig(seed=5, thermal_misregistration_px=(1.0, 0.0), misregistration_jitter_px=3.0,
                         **QUIET_THERMAL)
    shifts = [generate_scene(i, config).thermal_shift for i in range(6)]
    assert shifts == [generate_scene(i, config).thermal_shift for i in range(6)]  # deterministic
    assert len(set(shifts)) == 6
    assert all(-2.0 <= dx <= 4.0 and -3.0 <= dy <= 3.0 for dx, dy in shifts)
    # the thermal image moves by the drawn shift: equal to a fixed misregistration of that amount
    dx, dy = shifts[2]
    fixed = generate_scene(2, SceneConfig(seed=5, thermal_misregistration_px=(dx, dy), **QUIET_THERMAL))
    jittered = generate_scene(2, config)
    np.testing.assert_array_equal(jittered.thermal16, fixed.thermal16)
    np.testing.assert_array_equal(jittered.rgb, fixed.rgb)


def test_variety_preset_is_deterministic_and_keeps_layout() -> None:
    a = generate_scene(3, SceneConfig(seed=8, **VARIETY))
    b = generate_scene(3, SceneConfig(seed=8, **VARIETY))
    plain = generate_scene(3, SceneConfig(seed=8))
    for x, y in ((a.rgb, b.rgb), (a.thermal16, b.thermal16), (a.labels, plain.labels)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.rgb, plain.rgb)


@pytest.mark.parametrize(("field", "value"), [("thermal_crossover", 1.5), ("vignetting", 1.0),
                                              ("night_glare", -1.0), ("misregistration_jitter_px", float("nan"))])
def test_bad_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(IVFIOError, match=field):
        SceneConfig(**{field: value})


def test_index_json_names_variety_only_when_on(tmp_path: Path) -> None:
    plain = write_scene_folder(tmp_path / "plain", 1, SceneConfig(height=64, width=64))
    assert "vignetting" not in json.loads((plain / "index.json").read_text())["config"]
    varied = write_scene_folder(tmp_path / "varied", 1, SceneConfig(height=64, width=64, vignetting=0.2))
    assert json.loads((varied / "index.json").read_text())["config"]["vignetting"] == 0.2


def test_generate_cli_variety_and_overrides(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path / "ds"), "--count", "1", "--size", "64x96", "--variety",
                          "--vignetting", "0.1", "--thermal-noise", "0"]) == 0
    config = json.loads((tmp_path / "ds" / "index.json").read_text())["config"]
    assert config["vignetting"] == 0.1 and config["thermal_noise_std"] == 0.0
    assert config["thermal_crossover"] == VARIETY["thermal_crossover"]
    assert config["night_glare"] == VARIETY["night_glare"]
