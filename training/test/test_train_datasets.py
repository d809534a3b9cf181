"""Datasets: folder layout, real pairs, generated scenes, the mix and the resumable order."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.image_files import write_png
from ivf_training.augment import IGNORE_INDEX, JointAugment
from ivf_training.datasets import (
    AugmentedDataset,
    FolderPairDataset,
    GeneratedScenesDataset,
    RealPairsDataset,
    ResumableBatchSampler,
    build_mix,
    describe_dataset,
)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """vi: a, b, c; ir: a, b (half size), d; labels: a only."""
    root = tmp_path / "set"
    write_png(root / "vi" / "a.png", _rgb(32, 40, 0))
    write_png(root / "vi" / "b.png", _rgb(32, 40, 1))
    write_png(root / "vi" / "c.png", _rgb(32, 40, 2))
    write_png(root / "ir" / "a.png", np.full((32, 40), 200, np.uint8))
    write_png(root / "ir" / "b.png", np.full((16, 20), 100, np.uint8))
    write_png(root / "ir" / "d.png", np.zeros((32, 40), np.uint8))
    labels = np.zeros((32, 40), np.uint8)
    labels[:, 20:] = 3
    labels[0, 0] = IGNORE_INDEX
    write_png(root / "labels" / "a.png", labels)
    return root


def test_folder_pairs_missing_counterparts_and_resize(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ds = FolderPairDataset(folder, num_classes=9)
    assert len(ds) == 2 and ds.labelled
    text = caplog.text
    assert "1 visible images have no thermal counterpart (skipped): c" in text
    assert "1 thermal images have no visible counterpart (skipped): d" in text
    assert "1 pairs have no label file" in text and ": b" in text

    a = ds[0]
    assert a["name"] == "a"
    assert a["rgb"].shape == (3, 32, 40) and a["rgb"].dtype == torch.float32
    assert torch.allclose(a["thermal"], torch.full((1, 32, 40), 200 / 255))
    assert a["labels"].dtype == torch.int64 and a["labels"][0, 0] == IGNORE_INDEX and a["labels"][5, 30] == 3
    assert torch.allclose(a["rgb"], torch.from_numpy(_rgb(32, 40, 0)).permute(2, 0, 1).float() / 255)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        b = ds[1]
    assert "thermal 20x16 differs from visible 40x32; resizing" in caplog.text
    assert b["thermal"].shape == (1, 32, 40) and torch.allclose(b["thermal"], torch.full((1, 32, 40), 100 / 255))
    assert bool((b["labels"] == IGNORE_INDEX).all())
    assert describe_dataset(ds) == {"kind": "folder", "root": str(folder), "pairs": 2, "labelled": 1,
                                    "missing_vi": 1, "missing_ir": 1}


def test_out_of_range_labels_name_file_and_ids(folder: Path) -> None:
    bad = np.zeros((32, 40), np.uint8)
    bad[0, :3] = [9, 12, 12]
    write_png(folder / "labels" / "a.png", bad)
    ds = FolderPairDataset(folder, num_classes=9)
    with pytest.raises(DatasetError) as exc:
        ds[0]
    msg = str(exc.value)
    assert str(folder / "labels" / "a.png") in msg and "[9, 12]" in msg and "9 classes" in msg


def test_label_size_mismatch_is_an_error(folder: Path) -> None:
    write_png(folder / "labels" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"labels are 10x10 but the visible image is 40x32"):
        FolderPairDataset(folder, num_classes=9)[0]


def test_missing_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        FolderPairDataset(tmp_path / "nope")


def test_real_pairs_are_unlabelled_and_resized(folder: Path) -> None:
    ds = RealPairsDataset([folder], short_side=16)
    assert len(ds) == 2
    s = ds[0]
    assert s["name"] == "set/a"
    assert s["rgb"].shape == (3, 16, 20) and s["thermal"].shape == (1, 16, 20)
    assert bool((s["labels"] == IGNORE_INDEX).all())  # ignored by the CE, even if labels/ exists
    with pytest.raises(DatasetError, match="at least one folder"):
        RealPairsDataset([])


def test_generated_scenes_are_deterministic() -> None:
    ds = GeneratedScenesDataset(3, {"height": 64, "width": 80}, start=10)
    a, b = ds[1], ds[1]
    assert a["name"] == "scene_0000011"
    assert a["rgb"].shape == (3, 64, 80) and a["thermal"].shape == (1, 64, 80) and a["labels"].shape == (64, 80)
    assert all(torch.equal(a[k], b[k]) for k in ("rgb", "thermal", "labels"))
    assert float(a["thermal"].min()) >= 0 and float(a["thermal"].max()) <= 1
    assert int(a["labels"].max()) < 9
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(DatasetError, match="invalid generated scene settings"):
        GeneratedScenesDataset(2, {"hieght": 64})


def test_mix_repeat_and_describe(folder: Path) -> None:
    gen = GeneratedScenesDataset(4, {"height": 64, "width": 64})
    real = RealPairsDataset([folder])
    mix = build_mix([(gen, 1), (real, 3)])
    assert len(mix) == 4 + 2 * 3
    assert mix[4 + 2]["name"] == mix[4]["name"] == "set/a"
    desc = describe_dataset(mix)
    assert desc["kind"] == "mix" and desc["samples"] == 10
    assert desc["parts"][0]["kind"] == "generated" and desc["parts"][1]["repeat"] == 3


def test_resumable_batch_sampler() -> None:
    s = ResumableBatchSampler(10, 3, seed=5)
    assert s.batches_per_epoch == 3
    s.set_epoch(0)
    full = list(s)
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    assert len({i for b in full for i in b}) == 9
    s.set_epoch(0, skip_batches=2)
    assert list(s) == full[2:] and len(s) == 1
    s.set_epoch(1)
    assert list(s) != full
    s2 = ResumableBatchSampler(10, 3, seed=5)
    s2.set_epoch(0)
    assert list(s2) == full
    with pytest.raises(DatasetError, match="fewer than batch_size"):
        ResumableBatchSampler(2, 3, seed=0)


def test_augmented_dataset_depends_on_seed_epoch_index_only() -> None:
    base = GeneratedScenesDataset(2, {"height": 64, "width": 80})
    aug = AugmentedDataset(base, JointAugment(48, scale_range=(0.7, 1.3)), seed=1)
    a = aug[0]["rgb"]
    _ = aug[1]
    assert torch.equal(aug[0]["rgb"], a)  # order of access does not matter
    aug.set_epoch(1)
    assert not torch.equal(aug[0]["rgb"], a)
    aug.set_epoch(0)
    assert torch.equal(aug[0]["rgb"], a)


@pytest.mark.realdata
def test_llvip_train_pairs_load(shared_data: Path) -> None:
    root = shared_data / "llvip" / "train"
    ds = RealPairsDataset([root], short_side=128, max_pairs=2)
    s = ds[0]
    assert len(ds) == 2
    assert s["rgb"].shape[1] == 128 and s["thermal"].shape[1:] == s["rgb"].shape[1:]
    assert bool((s["labels"] == IGNORE_INDEX).all())
