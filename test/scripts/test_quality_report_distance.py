"""scripts/quality_report.py's distance to the baselines: mean |ΔY| between two folders of fused
images, in grey levels, so a file that only reproduces the pixel maximum shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import quality_report as report
from PIL import Image


def _write(folder: Path, name: str, rgb: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / name)


def test_mean_luminance_difference_over_every_pixel_of_every_image(tmp_path: Path) -> None:
    gray = np.full((4, 6, 3), 100, np.uint8)
    _write(tmp_path / "a", "0.png", gray)
    _write(tmp_path / "b", "0.png", gray + 10)  # ΔY = 10 on every pixel
    white = np.full((2, 6, 3), 255, np.uint8)
    red = white.copy()
    red[..., 1:] = 0  # Y(255, 0, 0) = 0.299 · 255
    _write(tmp_path / "a", "1.png", white)
    _write(tmp_path / "b", "1.png", red)
    expected = (24 * 10 + 12 * (255 - 0.299 * 255)) / 36
    assert report._luminance_difference(tmp_path / "a", tmp_path / "b") == pytest.approx(expected, abs=1e-3)
    assert report._luminance_difference(tmp_path / "a", tmp_path / "a") == 0.0
