"""PST900 loader against a miniature of its layout: {train,test}/{rgb,thermal,thermal_raw,depth,labels}."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from layout_builders import H, W, assert_augmentation_keeps_alignment, assert_loaded, block_labels, write_scene

from ivf_perception.io.classes import PST900_CLASSES, PST900_PALETTE
from ivf_perception.io.errors import DatasetError
from ivf_perception.io.image_files import write_png
from ivf_training.datasets import PST900Dataset, build_dataset, default_split

NAMES = {"train": ["31_bag1a_rect_rgb_frame0000000007", "31_bag1a_rect_rgb_frame0000000019"],
         "test": ["32_bag2b_rect_rgb_frame0000000101"]}


@pytest.fixture
def pst900(tmp_path: Path) -> Path:
    root = tmp_path / "PST900_RGBT_Dataset"
    for split, names in NAMES.items():
        for shift, name in enumerate(names):
            folder = root / split
            write_scene(5, shift, rgb=folder / "rgb" / f"{name}.png", thermal=folder / "thermal" / f"{name}.png",
                        labels=folder / "labels" / f"{name}.png")
            # raw 16-bit counts: two temperatures, left and right half
            raw = np.where(np.arange(W)[None, :] < W // 2, 1000, 3000).repeat(H, 0).astype(np.uint16)
            write_png(folder / "thermal_raw" / f"{name}.png", raw)
            write_png(folder / "depth" / f"{name}.png", np.full((H, W), 2560, np.uint16))
    return root


def test_eight_bit_thermal_pixels_and_classes(pst900: Path) -> None:
    ds = PST900Dataset(pst900, "train")
    assert len(ds) == 2
    for shift in range(2):
        assert_loaded(ds[shift], 5, shift)  # 8-bit thermal read as x / 255
    assert ds.class_table.classes == PST900_CLASSES == ("background", "fire_extinguisher", "backpack",
                                                        "hand_drill", "survivor")
    assert len(PST900_PALETTE) == 5
    assert default_split("pst900", "val") == "test"
    scanned = build_dataset("pst900", pst900, "test", num_classes=5)
    # one scene with ids (b + 1) % 5: 1, 2, 3, 4, 0, 1 over blocks of 128 (ignore corner), 132, 120, 132, 132, 120
    assert scanned.label_stats.class_pixels == [132, 128 + 120, 132, 120, 132]
    assert scanned.describe()["thermal"] == "thermal"


def test_sixteen_bit_raw_thermal_goes_through_agc(pst900: Path) -> None:
    ds = build_dataset("pst900", pst900, "train", thermal="thermal_raw")
    thermal = ds[0]["thermal"][0]
    # percentile AGC maps the two raw levels to the ends of [0, 1], never raw / 65535
    assert torch.equal(thermal[:, : W // 2], torch.zeros(H, W // 2))
    assert torch.equal(thermal[:, W // 2 :], torch.ones(H, W // 2))
    assert ds.describe()["thermal"] == "thermal_raw"


def test_bad_options_and_ids(pst900: Path) -> None:
    with pytest.raises(DatasetError, match="thermal must be one of thermal, thermal_raw; got 'depth'"):
        PST900Dataset(pst900, thermal="depth")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="unknown option\\(s\\) colour for dataset kind 'pst900'; accepted: thermal"):
        build_dataset("pst900", pst900, colour=True)
    with pytest.raises(DatasetError, match=r"the labels have 5 classes .* but num_classes=9"):
        build_dataset("pst900", pst900, num_classes=9)
    bad = block_labels(5)
    bad[20, 30] = 5
    name = NAMES["train"][1]
    write_png(pst900 / "train" / "labels" / f"{name}.png", bad)
    with pytest.raises(DatasetError) as exc:
        build_dataset("pst900", pst900, "train")
    assert (f"{name}.png: class ids [5] are out of range for 5 classes (PST900: 0 background .. 4 survivor"
            in str(exc.value))


def test_augmentation_keeps_rgb_thermal_labels_aligned(pst900: Path) -> None:
    assert_augmentation_keeps_alignment(PST900Dataset(pst900, "train"))
