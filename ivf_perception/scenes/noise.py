"""Fast, seeded noise for the sensor models and surface textures."""

from __future__ import annotations

import functools
import statistics

import cv2
import numpy as np

__all__ = ["gaussian", "normal_table", "smooth_noise"]


@functools.lru_cache(maxsize=1)
def normal_table() -> np.ndarray:
    """Standard-normal quantiles at the 65536 mid-points of [0, 1] (an inverse-CDF table)."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((k + 0.5) / 65536.0) for k in range(65536)], np.float32)


def gaussian(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 noise via random 16-bit indices into :func:`normal_table`.

    Why: ``Generator.standard_normal`` costs ~6 ms for one 320x240 RGB frame on our CI cores,
    a third of the scene budget; random bytes through a 65536-entry inverse-CDF table cost ~1 ms
    and are indistinguishable once rounded to 8-bit/16-bit sensor levels.
    """
    count = int(np.prod(shape))
    idx = np.frombuffer(rng.bytes(2 * count), dtype="<u2")
    return np.take(normal_table(), idx).reshape(shape)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise (~unit std) by bicubic upsampling of a coarse random grid."""
    gh, gw = height // cell + 3, width // cell + 3
    grid = gaussian(rng, (gh, gw))
    big = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
    oy, ox = cell, cell
    return big[oy:oy + height, ox:ox + width]
