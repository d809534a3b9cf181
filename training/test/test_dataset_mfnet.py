"""MFNet loader against a miniature of its layout: 4-channel images/, labels/, split files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from layout_builders import (
    assert_augmentation_keeps_alignment,
    assert_loaded,
    block_labels,
    scene,
    write_scene,
)

from ivf_perception.io.classes import MFNET_CLASSES
from ivf_perception.io.errors import DatasetError, DatasetNotFoundError, ImageFileError
from ivf_perception.io.image_files import write_png
from ivf_training.datasets import MFNetDataset, build_dataset, default_split

SPLITS = {"train": ["00001D", "00002N", "00003D"], "val": ["00004N"], "test": ["00005D"]}
SHIFTS = {name: i for i, name in enumerate(n for names in SPLITS.values() for n in names)}


@pytest.fixture
def mfnet(tmp_path: Path) -> Path:
    root = tmp_path / "ir_seg_dataset"
    for name, shift in SHIFTS.items():
        write_scene(9, shift, rgbt=root / "images" / f"{name}.png", labels=root / "labels" / f"{name}.png")
    for split, names in SPLITS.items():
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_split_membership_and_pixels(mfnet: Path) -> None:
    for split, names in SPLITS.items():
        ds = MFNetDataset(mfnet, split)
        assert [f.name for f in ds.files] == names
        for i, name in enumerate(names):
            sample = ds[i]
            assert sample["name"] == name
            assert_loaded(sample, 9, SHIFTS[name])  # RGB from channels 0-2, thermal from channel 3
    assert default_split("mfnet", "train") == "train" and default_split("mfnet", "val") == "val"


def test_class_table_and_class_counts(mfnet: Path) -> None:
    ds = build_dataset("mfnet", mfnet, "train", num_classes=9)
    expected = sum(np.bincount(block_labels(9, SHIFTS[n]).ravel(), minlength=256) for n in SPLITS["train"])
    assert ds.label_stats.class_pixels == expected[:9].tolist()
    assert ds.label_stats.ignore_pixels == 3 * 4 == expected[255]
    # blocks of 12x11, 12x11, 12x10 pixels; scene k uses ids k+1..k+6; 4 ignore pixels in the first block
    assert ds.label_stats.class_pixels == [0, 128, 132 + 128, 120 + 132 + 128, 384, 384, 384, 132 + 120, 120]
    desc = ds.describe()
    assert desc["kind"] == "mfnet" and desc["split"] == "train" and desc["samples"] == 3
    assert desc["classes"] == list(MFNET_CLASSES) and desc["class_pixels"] == expected[:9].tolist()


def test_missing_and_duplicated_names_are_listed(mfnet: Path, caplog: pytest.LogCaptureFixture) -> None:
    (mfnet / "train.txt").write_text("00001D\n00002N\n00003D\n00009D.png\n00001D\n\n")
    (mfnet / "labels" / "00002N.png").unlink()
    with caplog.at_level(logging.WARNING):
        ds = MFNetDataset(mfnet, "train")
    assert [f.name for f in ds.files] == ["00001D", "00003D"]
    text = caplog.text
    assert "2 usable samples; problems found" in text
    assert "1 names in train.txt have no image in images/ (skipped): 00009D" in text
    assert "1 names in train.txt have no label in labels/ (skipped): 00002N" in text
    assert "1 names appear more than once in train.txt (used once): 00001D" in text
    assert ds.describe()["skipped"] == {"names in train.txt have no image in images/ (skipped)": 1,
                                        "names in train.txt have no label in labels/ (skipped)": 1,
                                        "names appear more than once in train.txt (used once)": 1}


def test_nothing_usable_is_an_error_with_counts(mfnet: Path) -> None:
    (mfnet / "val.txt").write_text("01000D\n01001N\n")
    with pytest.raises(DatasetError, match=r"no usable samples \(2 names in val.txt have no image in images/"):
        MFNetDataset(mfnet, "val")


def test_unknown_split_lists_the_split_files(mfnet: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"trainval.txt does not exist; splits in .*: test, train, val"):
        MFNetDataset(mfnet, "trainval")


def test_out_of_range_ids_name_files_and_ids(mfnet: Path) -> None:
    bad = block_labels(9)
    bad[5, :3] = [9, 12, 12]
    write_png(mfnet / "labels" / "00003D.png", bad)
    with pytest.raises(DatasetError) as exc:
        build_dataset("mfnet", mfnet, "train")
    msg = str(exc.value)
    assert "1 of 3 label files are unusable" in msg
    assert f"{mfnet / 'labels' / '00003D.png'}: class ids [9, 12] are out of range for 9 classes" in msg
    assert "MFNet: 0 unlabelled .. 8 bump" in msg


def test_class_count_mismatch_and_three_channel_image(mfnet: Path) -> None:
    with pytest.raises(DatasetError, match=r"the labels have 9 classes \(unlabelled, car, .*\) but num_classes=5"):
        build_dataset("mfnet", mfnet, "train", num_classes=5)
    rgb, _, _ = scene(9)
    write_png(mfnet / "images" / "00001D.png", rgb)
    with pytest.raises(ImageFileError, match="not an MFNet 4-channel RGBT PNG"):
        MFNetDataset(mfnet, "train")[0]


def test_augmentation_keeps_rgb_thermal_labels_aligned(mfnet: Path) -> None:
    assert_augmentation_keeps_alignment(MFNetDataset(mfnet, "train"))
