"""Images as stored or decoded → the 8-bit gray the fusion metrics are defined on (DESIGN §6).

Why its own module: ``eval-fusion`` (images read from files) and bag replay (images decoded from
messages) must score the very same way, and replay is a library that may not depend on a
command; both call :func:`prepare_for_metrics`. The metrics themselves
(:mod:`ivf_perception.metrics.fusion`) only accept images whose 8-bit meaning is already defined;
this is where raw 16-bit thermal, float TIFFs and alpha channels get one.
"""

from __future__ import annotations

import numpy as np

from ivf_perception.io.thermal import agc_percentile
from ivf_perception.metrics.fusion import to_gray_u8

__all__ = ["prepare_for_metrics"]


def prepare_for_metrics(image: np.ndarray, role: str = "vi") -> np.ndarray:
    """Turn an image as stored (:func:`ivf_perception.io.image_files.read_image`) into gray 0..255.

    * RGBA / gray+alpha: the alpha channel is dropped.
    * 8-bit: :func:`~ivf_perception.metrics.to_gray_u8` (BT.601, rounded; gray passes).
    * 16-bit: for the thermal image (``role="ir"``) and gray, percentile gain control 1/99 %
      (:func:`ivf_perception.io.thermal.agc_percentile`, what the engine applies to raw counts);
      otherwise a fixed ``1/257`` scale to 8 bits.
    * float (TIFF): must be in ``[0, 1]``, except a gray thermal image, which goes through the
      same gain control as 16-bit.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB order) or ``(H, W, 4)`` array.
        role: ``"ir"`` for the thermal source, anything else (``"vi"``, ``"fused"``) otherwise.

    Returns:
        float64 ``(H, W)`` whole gray levels in ``0..255``.
    """
    x = image
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[:, :, :3]
    gray = x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 1)
    if x.dtype == np.uint16:
        if role == "ir" and gray:
            x = agc_percentile(x.reshape(x.shape[:2]))
        else:
            x = np.rint(x.astype(np.float64) / 257.0).astype(np.uint8)
    elif (np.issubdtype(x.dtype, np.floating) and role == "ir" and gray
          and np.isfinite(x).all() and (x.min() < 0.0 or x.max() > 1.0)):
        x = agc_percentile(x.reshape(x.shape[:2]))
    return to_gray_u8(x)
