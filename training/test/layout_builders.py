"""Miniature scenes for the dataset-loader tests, whose pixels say where they came from.

Every scene is 24x32. Visible green = 8·column, blue = 10·row, red = a code of the pixel's class;
thermal = 4·column + 3·row; labels are a 2x3 grid of class blocks with the top-left 2x2 corner
set to 255 (ignore). So after loading and augmenting:

- exact geometry (scale 1): each pixel's column and row decoded from the visible image predict
  its thermal value and its class exactly;
- any resampling: thermal = green/2 + 0.3·blue holds at every pixel (a linear identity survives
  any linear resampling applied to both images alike) and labels inside a block match the block's
  red code.

Misaligned crops, a flip applied to one array only, or transposed channels break these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ivf_perception.io.image_files import write_png

H, W = 24, 32
IGNORE = 255


def red_code(label: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Red value that encodes a class id (ids up to 15 stay below 256)."""
    return 10 + 15 * label


def block_labels(num_classes: int, shift: int = 0) -> np.ndarray:
    """(H, W) uint8: 2 rows x 3 columns of class blocks, top-left 2x2 pixels = 255."""
    rows, cols = np.mgrid[0:H, 0:W]
    block = (rows * 2 // H) * 3 + cols * 3 // W
    labels = ((block + 1 + shift) % num_classes).astype(np.uint8)
    labels[:2, :2] = IGNORE
    return labels


def scene(num_classes: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb (H, W, 3) uint8, thermal (H, W) uint8, labels (H, W) uint8)`` of one scene."""
    labels = block_labels(num_classes, shift)
    rows, cols = np.mgrid[0:H, 0:W]
    classes = np.where(labels == IGNORE, 0, labels).astype(np.int64)
    rgb = np.stack([red_code(classes), 8 * cols, 10 * rows], axis=-1).astype(np.uint8)
    thermal = (4 * cols + 3 * rows).astype(np.uint8)
    return rgb, thermal, labels


def write_scene(num_classes: int, shift: int, *, rgb: Path | None = None, thermal: Path | None = None,
                labels: Path | None = None, rgbt: Path | None = None) -> None:
    """Write the parts of a scene to the given files (``rgbt``: MFNet's 4-channel PNG)."""
    image, heat, lab = scene(num_classes, shift)
    if rgb is not None:
        write_png(rgb, image)
    if thermal is not None:
        write_png(thermal, heat)
    if labels is not None:
        write_png(labels, lab)
    if rgbt is not None:
        write_png(rgbt, np.dstack([image, heat]))


def assert_loaded(sample: dict, num_classes: int, shift: int) -> None:
    """The sample holds exactly the scene (pixels, thermal, labels with 255 kept)."""
    rgb, thermal, labels = scene(num_classes, shift)
    assert sample["rgb"].shape == (3, H, W) and sample["thermal"].shape == (1, H, W)
    assert torch.equal((sample["rgb"] * 255).round().to(torch.uint8), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal((sample["thermal"][0] * 255).round().to(torch.uint8), torch.from_numpy(thermal))
    assert torch.equal(sample["labels"], torch.from_numpy(labels).long())


def assert_aligned_exact(sample: dict) -> None:
    """After crop/flip/pad without scaling: thermal and labels agree with the visible pixels."""
    rgb = (sample["rgb"] * 255).round().long()
    thermal = (sample["thermal"][0] * 255).round().long()
    labels = sample["labels"]
    col, row = rgb[1] // 8, rgb[2] // 10
    valid = labels != IGNORE
    assert valid.any()
    assert torch.equal(thermal[valid], (4 * col + 3 * row)[valid])
    assert torch.equal(rgb[0][valid], red_code(labels)[valid])  # red changes exactly at block edges


def assert_aligned_resampled(sample: dict) -> None:
    """After any resampling: the linear identity holds everywhere; labels match block interiors."""
    rgb = sample["rgb"] * 255
    thermal = sample["thermal"][0] * 255
    assert torch.allclose(thermal, rgb[1] / 2 + 0.3 * rgb[2], atol=0.75)
    labels = sample["labels"]
    lab = labels[None, None].float()
    interior = (F.max_pool2d(lab, 5, 1, 2) == lab) & (-F.max_pool2d(-lab, 5, 1, 2) == lab)
    interior = interior[0, 0] & (labels != IGNORE)
    assert interior.sum() > 20
    assert torch.allclose(rgb[0][interior], red_code(labels[interior]).float(), atol=1.0)


def assert_augmentation_keeps_alignment(dataset) -> None:
    """Joint augmentation (crop with padding, flips, then random scales) keeps every array aligned."""
    from ivf_training.augment import JointAugment
    from ivf_training.datasets import AugmentedDataset

    exact = AugmentedDataset(dataset, JointAugment(28, scale_range=(1.0, 1.0)), seed=3)
    scaled = AugmentedDataset(dataset, JointAugment(20, scale_range=(0.6, 1.6)), seed=3)
    flipped = set()
    for epoch in range(4):
        exact.set_epoch(epoch)
        scaled.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = exact[i]
            assert sample["rgb"].shape == (3, 28, 28) and sample["labels"].shape == (28, 28)
            assert bool((sample["labels"][H:] == IGNORE).all())  # padded rows are ignored
            assert_aligned_exact(sample)
            green = sample["rgb"][1, 0]
            flipped.add(bool(green[0] > green[-1]))
            assert_aligned_resampled(scaled[i])
    assert flipped == {True, False}
