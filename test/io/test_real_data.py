"""Every real visible/thermal pair in ../shared/data loads with the right shapes, dtypes and ranges."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from ivf_perception.io import find_pairs, read_image, read_mfnet_4ch, read_rgb, read_thermal

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not DATA.is_dir(),
        reason=f"real data folder {DATA} is absent (it sits beside the repository in CI)",
    ),
]

# (sub-folder, expected number of pairs)
PAIR_SETS = [
    ("roadscene", 50),
    ("tno", 25),
    ("llvip/train", 32),
    ("llvip/test", 12),
    ("mfnet", 2),
]


def check_pair(rgb: np.ndarray, thermal: np.ndarray, name: str) -> None:
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8, (name, rgb.shape, rgb.dtype)
    assert thermal.ndim == 2 and thermal.dtype == np.float32, (name, thermal.shape, thermal.dtype)
    assert thermal.shape == rgb.shape[:2], (name, thermal.shape, rgb.shape)
    assert float(thermal.min()) >= 0.0 and float(thermal.max()) <= 1.0, name
    assert thermal.std() > 0.01 and rgb.std() > 1.0, f"{name} looks blank"


@pytest.mark.parametrize("subset, expected", PAIR_SETS, ids=[s for s, _ in PAIR_SETS])
def test_pairs_load(subset, expected):
    root = DATA / subset
    listing = find_pairs(root / "ir", root / "vi")
    assert len(listing) == expected
    assert not listing.missing_ir and not listing.missing_vi
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no thermal image in these sets is false colour
        for pair in listing:
            check_pair(read_rgb(pair.vi_path), read_thermal(pair.ir_path), f"{subset}/{pair.stem}")


def test_gray_stored_as_3_channels_collapses():
    """TNO and LLVIP store gray thermal as R=G=B: the reader returns that one channel."""
    for path in (DATA / "tno" / "ir" / "01.png", DATA / "llvip" / "test" / "ir" / "190001.jpg"):
        raw = read_image(path)
        assert raw.ndim == 3 and raw.shape[2] == 3
        np.testing.assert_allclose(read_thermal(path), raw[:, :, 0] / 255.0, atol=1e-6)


def test_mfnet_4ch_matches_split_files():
    root = DATA / "mfnet"
    files = sorted((root / "rgbt4ch").glob("*.png"))
    assert [f.stem for f in files] == ["01234N", "01477D"]
    for path in files:
        rgb, thermal = read_mfnet_4ch(path)
        assert rgb.shape == (480, 640, 3) and thermal.shape == (480, 640)
        check_pair(rgb, thermal, path.name)
        np.testing.assert_array_equal(rgb, read_rgb(root / "vi" / path.name))
        np.testing.assert_allclose(thermal, read_thermal(root / "ir" / path.name), atol=1e-7)
