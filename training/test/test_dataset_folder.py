"""Generic folder loader (vi/, ir/, optional labels/) through build_dataset, with bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from layout_builders import H, W, assert_augmentation_keeps_alignment, assert_loaded, block_labels, write_scene

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import write_png
from ivf_training.augment import IGNORE_INDEX
from ivf_training.datasets import FolderPairDataset, build_dataset, default_split


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/train/{vi,ir,labels} with three labelled scenes."""
    root = tmp_path / "rig"
    for shift, name in enumerate(["0001", "0002", "0003"]):
        write_scene(9, shift, rgb=root / "train" / "vi" / f"{name}.png", thermal=root / "train" / "ir" / f"{name}.png",
                    labels=root / "train" / "labels" / f"{name}.png")
    return root


def test_split_is_a_subfolder_and_pixels_load(folder: Path) -> None:
    assert default_split("folder", "train") is None and default_split("extract", "val") is None
    ds = build_dataset("folder", folder, "train", num_classes=9)
    assert isinstance(ds, FolderPairDataset) and len(ds) == 3 and ds.labelled
    for shift in range(3):
        assert_loaded(ds[shift], 9, shift)
    assert ds.label_stats.ignore_pixels == 12 and sum(ds.label_stats.class_pixels) == 3 * (H * W - 4)
    with pytest.raises(DatasetNotFoundError, match="dataset folder .*rig/val does not exist"):
        build_dataset("folder", folder, "val")


def test_without_labels_every_pixel_is_ignored(folder: Path) -> None:
    for f in (folder / "train" / "labels").iterdir():
        f.unlink()
    (folder / "train" / "labels").rmdir()
    ds = build_dataset("folder", folder / "train", num_classes=9)
    assert not ds.labelled and bool((ds[0]["labels"] == IGNORE_INDEX).all())
    assert ds.label_stats.files == 0


def test_sixteen_bit_thermal_uses_agc(folder: Path) -> None:
    raw = np.full((H, W), 20000, np.uint16)
    raw[:, W // 2 :] = 21000
    write_png(folder / "train" / "ir" / "0002.png", raw)
    thermal = FolderPairDataset(folder / "train")[1]["thermal"][0]
    assert torch.equal(thermal[:, : W // 2], torch.zeros(H, W // 2))
    assert torch.equal(thermal[:, W // 2 :], torch.ones(H, W // 2))


def test_no_matching_stems_is_an_error(folder: Path) -> None:
    for f in (folder / "train" / "ir").iterdir():
        f.rename(f.with_name("x" + f.name))
    with pytest.raises(DatasetError, match="no image stems match between"):
        FolderPairDataset(folder / "train")


def test_all_bad_label_files_are_named(folder: Path) -> None:
    for shift, name in enumerate(["0001", "0003"]):
        bad = block_labels(9, shift)
        bad[3, 3:5] = [10 + shift, 200]
        write_png(folder / "train" / "labels" / f"{name}.png", bad)
    with pytest.raises(DatasetError) as exc:
        build_dataset("folder", folder, "train", num_classes=9)
    msg = str(exc.value)
    assert "2 of 3 label files are unusable" in msg
    assert "0001.png: class ids [10, 200] are out of range for 9 classes (valid: 0..8 and 255 = ignore)" in msg
    assert "0003.png: class ids [11, 200]" in msg
    assert build_dataset("folder", folder, "train", num_classes=None).label_stats.class_pixels[200] == 2


def test_augmentation_keeps_rgb_thermal_labels_aligned(folder: Path) -> None:
    assert_augmentation_keeps_alignment(FolderPairDataset(folder / "train", num_classes=9))
