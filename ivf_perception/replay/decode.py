"""A pair of Image messages → the arrays the engine, the metrics and the files need.

Why a separate step: decoding happens only for frames that paired (as in the live node's
worker), and a frame that cannot be decoded must be skipped and reported without stopping the
replay, so the failure has to surface here, per frame, as one exception type. The images are
decoded by the same codec functions as in the node (``decode_rgb``/``decode_thermal``: channel
order only), so the Engine receives identical arrays on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ivf_perception.io.errors import ImageDecodeError
from ivf_perception.io.image_codec import decode_rgb, decode_thermal, encoding_info, image_to_numpy

from .pairing import FramePair

__all__ = ["DecodedFrame", "decode_pair", "decode_labels"]


@dataclass
class DecodedFrame:
    """Arrays of one pair.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint16 raw counts from a 16-bit gray camera
            (the engine applies AGC; its result's ``rgb`` is the 8-bit image).
        thermal: as recorded: ``(H, W)`` uint8 or uint16 raw counts, or ``(H, W, 3)`` uint8 RGB
            for false-colour cameras (the engine applies AGC / luminance itself).
        thermal_encoding: the thermal message's encoding.
        labels: ``(H, W)`` class ids of the ground truth, or None.
    """

    rgb: np.ndarray
    thermal: np.ndarray
    thermal_encoding: str
    labels: np.ndarray | None = None


def decode_labels(msg: object) -> np.ndarray:
    """A ground-truth label Image (``mono8``/``mono16``/``8UC1``/``16UC1`` class ids) → ``(H, W)``.

    Raises:
        ImageDecodeError: a colour encoding (a visualisation, not class ids) or a malformed image.
    """
    array = image_to_numpy(msg)
    if array.ndim != 2:
        raise ImageDecodeError(f"label images must hold one class id per pixel (mono8/mono16), got "
                               f"encoding {getattr(msg, 'encoding', '?')}")
    return array


def decode_pair(pair: FramePair) -> DecodedFrame:
    """Decode the RGB, thermal and (if present) label messages of a pair.

    Raises:
        ImageDecodeError: (including UnsupportedEncodingError) naming which image failed.
    """
    try:
        rgb = decode_rgb(pair.rgb_msg)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"RGB image: {exc}") from exc
    try:
        encoding = encoding_info(pair.thermal_msg.encoding).name
        thermal = decode_thermal(pair.thermal_msg)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"thermal image: {exc}") from exc
    labels = None
    if pair.label_msg is not None:
        try:
            labels = decode_labels(pair.label_msg)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"label image: {exc}") from exc
        if labels.shape != rgb.shape[:2]:
            raise ImageDecodeError(f"label image is {labels.shape[1]}x{labels.shape[0]} but the RGB image is "
                                   f"{rgb.shape[1]}x{rgb.shape[0]}; labels must match the RGB image")
    return DecodedFrame(rgb=rgb, thermal=thermal, thermal_encoding=encoding, labels=labels)
