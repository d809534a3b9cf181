"""Class names and colour palettes of the label sets we use.

MFNet's 9 classes (Ha et al., IROS 2017) are shared by MSRS and by our generated scenes, so
one definition serves the loaders, the synthetic data, the node's parameters and the metrics.
Palettes are lists of ``0xRRGGBB`` integers, the form a ROS parameter list takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MFNET_CLASSES", "MFNET_PALETTE", "palette_to_array", "colorize_labels"]

MFNET_CLASSES: tuple[str, ...] = (
    "unlabelled",
    "car",
    "person",
    "bike",
    "curve",  # MFNet's name for curbs
    "car_stop",
    "guardrail",
    "color_cone",
    "bump",
)

# The palette of the MFNet reference code (and the MFNet/RTFNet/CMFS visualisations).
MFNET_PALETTE: list[int] = [
    0x000000,  # unlabelled (0, 0, 0)
    0x400080,  # car (64, 0, 128)
    0x404000,  # person (64, 64, 0)
    0x0080C0,  # bike (0, 128, 192)
    0x0000C0,  # curve (0, 0, 192)
    0x808000,  # car_stop (128, 128, 0)
    0x404080,  # guardrail (64, 64, 128)
    0xC08080,  # color_cone (192, 128, 128)
    0xC04000,  # bump (192, 64, 0)
]


def palette_to_array(palette: Sequence[int]) -> np.ndarray:
    """Convert ``0xRRGGBB`` integers to a ``(K, 3)`` uint8 RGB array.

    Raises:
        ValueError: an entry is not an integer in ``[0, 0xFFFFFF]``.
    """
    values = list(palette)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            0 <= int(value) <= 0xFFFFFF
        ):
            raise ValueError(
                f"palette entry {i} must be an integer 0xRRGGBB in [0, 0xFFFFFF], got {value!r}"
            )
    ints = np.asarray(values, dtype=np.int64).reshape(-1, 1)
    return ((ints >> np.array([16, 8, 0])) & 0xFF).astype(np.uint8)


def colorize_labels(labels: np.ndarray, palette: Sequence[int] = MFNET_PALETTE) -> np.ndarray:
    """Map an ``(H, W)`` class-id image to ``(H, W, 3)`` uint8 RGB; ids beyond the palette are black.

    Black for unknown ids (including the 255 "ignore" label) keeps visualisation total instead of
    failing on a single stray value.
    """
    lut = np.zeros((256, 3), np.uint8)
    colours = palette_to_array(palette)[:256]
    lut[: len(colours)] = colours
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        labels = np.where((labels >= 0) & (labels < 256), labels, 0).astype(np.uint8)
    return lut[labels]
