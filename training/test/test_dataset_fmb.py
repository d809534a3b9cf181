"""FMB loader against a miniature of its layout: {train,test}/{Visible,Infrared,Label}."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from layout_builders import assert_augmentation_keeps_alignment, assert_loaded, block_labels, write_scene

from ivf_perception.io.classes import FMB_CLASSES, FMB_PALETTE
from ivf_perception.io.errors import DatasetError
from ivf_perception.io.image_files import write_png
from ivf_training.datasets import FMBDataset, build_dataset, default_split

SHIFTS = {"00011": 0, "00152": 8, "01230": 9}


@pytest.fixture
def fmb(tmp_path: Path) -> Path:
    root = tmp_path / "FMB"
    for name, shift in SHIFTS.items():
        for split in ("train", "test"):
            write_scene(15, shift, rgb=root / split / "Visible" / f"{name}.png",
                        thermal=root / split / "Infrared" / f"{name}.png",
                        labels=root / split / "Label" / f"{name}.png")
    return root


def test_pixels_and_fifteen_classes(fmb: Path) -> None:
    ds = build_dataset("fmb", fmb, "train", num_classes=15)
    assert [ds[i]["name"] for i in range(len(ds))] == list(SHIFTS)
    for i, shift in enumerate(SHIFTS.values()):
        assert_loaded(ds[i], 15, shift)
    assert len(FMB_CLASSES) == len(FMB_PALETTE) == 15
    assert FMB_CLASSES[0] == "unlabelled" and FMB_CLASSES[1] == "road" and FMB_CLASSES[14] == "pole"
    pixels = ds.label_stats.class_pixels
    assert len(pixels) == 15 and pixels[14] > 0 and pixels[0] > 0  # shift 8 and 9 reach ids 14 and 0
    assert sum(pixels) == 3 * (24 * 32 - 4)
    assert default_split("fmb", "train") == "train" and default_split("fmb", "val") == "test"
    assert FMBDataset(fmb, "test").describe()["classes"] == list(FMB_CLASSES)


def test_id_15_is_out_of_range(fmb: Path) -> None:
    bad = block_labels(15, 8)
    bad[0, 20:22] = 15
    write_png(fmb / "test" / "Label" / "00152.png", bad)
    with pytest.raises(DatasetError, match=r"00152.png: class ids \[15\] are out of range for 15 classes "
                                           r"\(FMB: 0 unlabelled .. 14 pole"):
        build_dataset("fmb", fmb, "test")
    with pytest.raises(DatasetError, match=r"00152.png: class ids \[15\]"):
        FMBDataset(fmb, "test")[1]  # also when reading a single sample


def test_missing_infrared_is_listed(fmb: Path, caplog: pytest.LogCaptureFixture) -> None:
    (fmb / "train" / "Infrared" / "00152.png").unlink()
    with caplog.at_level(logging.WARNING):
        ds = FMBDataset(fmb, "train")
    assert len(ds) == 2
    assert "1 visible images have no thermal counterpart (skipped): 00152" in caplog.text
    assert ds.describe()["skipped"] == {"visible images have no thermal counterpart (skipped)": 1}


def test_augmentation_keeps_rgb_thermal_labels_aligned(fmb: Path) -> None:
    assert_augmentation_keeps_alignment(FMBDataset(fmb, "train"))
