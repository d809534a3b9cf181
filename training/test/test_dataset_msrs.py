"""MSRS loader against a miniature of its layout: {train,test}/{vi,ir,Segmentation_labels}."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from layout_builders import assert_augmentation_keeps_alignment, assert_loaded, block_labels, write_scene

from ivf_perception.io.classes import MFNET_CLASSES
from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import write_png
from ivf_training.datasets import MSRSDataset, build_dataset, default_split

SPLITS = {"train": ["00001D", "00003N", "00005N"], "test": ["00004N", "00055D"]}


def _write(root: Path, split: str, name: str, shift: int, *, vi: bool = True, ir: bool = True,
           labels: bool = True) -> None:
    folder = root / split
    write_scene(9, shift, rgb=folder / "vi" / f"{name}.png" if vi else None,
                thermal=folder / "ir" / f"{name}.png" if ir else None,
                labels=folder / "Segmentation_labels" / f"{name}.png" if labels else None)


@pytest.fixture
def msrs(tmp_path: Path) -> Path:
    root = tmp_path / "MSRS"
    for split, names in SPLITS.items():
        for shift, name in enumerate(names):
            _write(root, split, name, shift)
    # the colour renderings beside the labels must not be mistaken for labels
    write_png(root / "train" / "Segmentation_visualize" / "00001D.png", np.full((24, 32, 3), 64, np.uint8))
    return root


def test_splits_pixels_and_classes(msrs: Path) -> None:
    for split, names in SPLITS.items():
        ds = MSRSDataset(msrs, split)
        assert [ds[i]["name"] for i in range(len(ds))] == names
        for shift in range(len(names)):
            assert_loaded(ds[shift], 9, shift)
    assert default_split("msrs", "train") == "train" and default_split("msrs", "val") == "test"
    ds = build_dataset("msrs", msrs, "test", num_classes=9)
    # scene 0 uses ids 1..6, scene 1 ids 2..7 (blocks of 132, 132, 120 px per row of blocks)
    assert ds.label_stats.class_pixels == [0, 128, 132 + 128, 120 + 132, 132 + 120, 132 + 132, 120 + 132, 120, 0]
    assert ds.describe()["classes"] == list(MFNET_CLASSES)


def test_unmatched_files_are_listed_with_counts(msrs: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(msrs, "train", "00007D", 0, ir=False)           # visible only
    _write(msrs, "train", "00008D", 0, vi=False, labels=False)  # thermal only
    _write(msrs, "train", "00009N", 0, labels=False)       # pair without a label
    _write(msrs, "train", "00010N", 0, vi=False, ir=False)  # label without a pair
    with caplog.at_level(logging.WARNING):
        ds = MSRSDataset(msrs, "train")
    assert len(ds) == 3
    text = caplog.text
    assert f"MSRS {msrs} [train]: 3 usable samples; problems found" in text
    assert "1 visible images have no thermal counterpart (skipped): 00007D" in text
    assert "1 thermal images have no visible counterpart (skipped): 00008D" in text
    assert "1 pairs have no label file (skipped): 00009N" in text
    assert "1 label files have neither a visible nor a thermal image (ignored): 00010N" in text


def test_missing_folders_and_splits(msrs: Path) -> None:
    with pytest.raises(DatasetNotFoundError,
                       match=r"MSRS split folder .*val does not exist; .* holds the folders: test, train"):
        MSRSDataset(msrs, "val")
    for f in (msrs / "test" / "Segmentation_labels").iterdir():
        f.unlink()
    with pytest.raises(DatasetError,
                       match=r"no usable samples \(2 pairs have no label file \(skipped\): 00004N, 00055D\)"):
        MSRSDataset(msrs, "test")
    (msrs / "test" / "Segmentation_labels").rmdir()
    with pytest.raises(DatasetNotFoundError, match="label folder .*Segmentation_labels does not exist"):
        MSRSDataset(msrs, "test")


def test_colour_or_out_of_range_labels_are_errors(msrs: Path) -> None:
    write_png(msrs / "train" / "Segmentation_labels" / "00003N.png",
              np.dstack([block_labels(9)] * 2 + [block_labels(9, 1)]))
    bad = block_labels(9)
    bad[10, 10] = 40
    write_png(msrs / "train" / "Segmentation_labels" / "00005N.png", bad)
    with pytest.raises(DatasetError) as exc:
        build_dataset("msrs", msrs)
    msg = str(exc.value)
    assert "2 of 3 label files are unusable" in msg
    assert "00003N.png: label images must hold one class id per pixel" in msg
    assert "00005N.png: class ids [40] are out of range for 9 classes" in msg


def test_augmentation_keeps_rgb_thermal_labels_aligned(msrs: Path) -> None:
    assert_augmentation_keeps_alignment(MSRSDataset(msrs, "train"))
