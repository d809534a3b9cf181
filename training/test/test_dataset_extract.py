"""Loader of `ivf-perception extract` folders against a hand-written miniature extraction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_builders import H, W, assert_augmentation_keeps_alignment, assert_loaded, write_scene

from ivf_perception.io.errors import DatasetError, DatasetNotFoundError
from ivf_perception.io.extract_layout import EXTRACT_INDEX_FORMAT
from ivf_perception.io.image_files import write_png
from ivf_training.augment import IGNORE_INDEX
from ivf_training.datasets import ExtractedDataset, build_dataset

STAMPS = [1_700_000_000_000_000_000 + i * 100_000_000 for i in range(6)]
NAMES = [f"{s:019d}" for s in STAMPS]


def _frame(i: int, has_labels: bool) -> dict:
    return {"name": NAMES[i], "rgb_stamp_ns": STAMPS[i], "thermal_stamp_ns": STAMPS[i] + 3_000_000, "skew_ms": 3.0,
            "rgb_log_ns": STAMPS[i], "thermal_log_ns": STAMPS[i], "frame_id": "camera", "thermal_encoding": "mono8",
            "has_labels": has_labels}


@pytest.fixture
def extracted(tmp_path: Path) -> Path:
    """Frames 0-2 labelled, 3 unlabelled, 4 listed but its ir file lost, 5 on disk but not indexed."""
    root = tmp_path / "drive"
    for i in range(6):
        write_scene(9, i, rgb=root / "vi" / f"{NAMES[i]}.png", thermal=root / "ir" / f"{NAMES[i]}.png",
                    labels=root / "labels" / f"{NAMES[i]}.png" if i < 3 else None)
    (root / "ir" / f"{NAMES[4]}.png").unlink()
    index = {
        "format": EXTRACT_INDEX_FORMAT,
        "source": {"bag": "/bags/drive1", "storage": "mcap",
                   "topics": {"rgb": "/rgb/image", "thermal": "/thermal/image", "label": "/labels"},
                   "pairing": {"slop_s": 0.02, "queue_size": 10}},
        "complete": False,
        "frames": [_frame(i, i < 3) for i in range(5)],
        "skipped": [{"name": "1699999999900000000", "rgb_stamp_ns": 1699999999900000000, "reason": "bad step"}],
    }
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_frames_of_the_index_in_stamp_order(extracted: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ds = build_dataset("extract", extracted, num_classes=9)
    assert isinstance(ds, ExtractedDataset)
    assert [ds[i]["name"] for i in range(len(ds))] == NAMES[:4]
    for i in range(3):
        assert_loaded(ds[i], 9, i)
    assert bool((ds[3]["labels"] == IGNORE_INDEX).all())  # frame without a label message
    text = caplog.text
    assert f"extract {extracted}: 4 usable samples; problems found" in text
    assert f"1 frames listed in index.json have missing files (skipped): {NAMES[4]}" in text
    assert "1 frames were undecodable at extraction (not on disk; reasons in index.json): 1699999999900000000" in text
    assert f"1 frames have no label message (trained as unlabelled, labels 255): {NAMES[3]}" in text
    assert (f"1 images in vi/ are not listed in index.json (ignored; run extract again to index them): "
            f"{NAMES[5]}") in text
    assert "the extraction did not finish (complete: false)" in text
    desc = ds.describe()
    assert desc["kind"] == "extract" and desc["source_bag"] == "/bags/drive1" and desc["complete"] is False
    assert desc["labelled"] == 3 and desc["samples"] == 4
    assert sum(desc["class_pixels"]) == 3 * (H * W - 4)


def test_raw_sixteen_bit_thermal_frames(extracted: Path) -> None:
    raw = np.full((H, W), 7000, np.uint16)
    raw[H // 2 :] = 7400
    write_png(extracted / "ir" / f"{NAMES[3]}.png", raw)
    thermal = ExtractedDataset(extracted)[3]["thermal"][0]
    assert (torch.equal(thermal[: H // 2], torch.zeros(H // 2, W))
            and torch.equal(thermal[H // 2 :], torch.ones(H // 2, W)))


def test_not_an_extraction(extracted: Path) -> None:
    index = json.loads((extracted / "index.json").read_text())
    (extracted / "index.json").write_text(json.dumps({**index, "format": "something/2"}))
    with pytest.raises(DatasetError, match="has format 'something/2'; expected 'ivf_perception.extract/1'"):
        ExtractedDataset(extracted)
    (extracted / "index.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="is not an `ivf-perception extract` folder .*use kind 'folder'"):
        ExtractedDataset(extracted)


def test_index_without_usable_frames(extracted: Path) -> None:
    index = json.loads((extracted / "index.json").read_text())
    (extracted / "index.json").write_text(json.dumps({**index, "frames": [_frame(4, False)], "complete": True}))
    with pytest.raises(DatasetError, match=r"no usable samples \(1 frames listed in index.json have missing files"):
        ExtractedDataset(extracted)


def test_augmentation_keeps_rgb_thermal_labels_aligned(extracted: Path) -> None:
    assert_augmentation_keeps_alignment(ExtractedDataset(extracted, max_pairs=3))
