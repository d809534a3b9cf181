"""A pair of camera messages (Image or CompressedImage) → the arrays the engine, the metrics and the files need.

Why a separate step: decoding happens only for frames that paired (as in the live node's
worker), and a frame that cannot be decoded must be skipped and reported without stopping the
replay (or an extraction, or training's guidance pass), so the failure has to surface here, per
frame, as one exception type. The images are decoded by the same codec functions as in the node
(``decode_rgb``/``decode_thermal``: channel order only; CompressedImage JPEG/PNG through the
codec's OpenCV decoding), so the Engine receives identical arrays on both paths, and a 16-bit
PNG thermal frame the same raw counts as ``mono16``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bag_pairing import FramePair
from .errors import ImageDecodeError
from .image_codec import (
    compressed_to_numpy,
    decode_rgb,
    decode_thermal,
    image_to_numpy,
    is_compressed,
    message_encoding,
)

__all__ = ["DecodedFrame", "decode_pair", "decode_labels"]


@dataclass
class DecodedFrame:
    """Arrays of one pair.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint16 raw counts from a 16-bit gray camera
            (the engine applies AGC; its result's ``rgb`` is the 8-bit image).
        thermal: as recorded: ``(H, W)`` uint8 or uint16 raw counts, or ``(H, W, 3)`` uint8 RGB
            for false-colour cameras (the engine applies AGC / luminance itself).
        thermal_encoding: the thermal message's encoding (a CompressedImage: the one its format
            names, else that of the decoded array: ``mono8``, ``mono16`` or ``rgb8``).
        labels: ``(H, W)`` class ids of the ground truth, or None.
    """

    rgb: np.ndarray
    thermal: np.ndarray
    thermal_encoding: str
    labels: np.ndarray | None = None


def decode_labels(msg: object) -> np.ndarray:
    """A ground-truth label Image (``mono8``/``mono16``/``8UC1``/``16UC1`` class ids, or a PNG
    CompressedImage of them) → ``(H, W)``.

    Raises:
        ImageDecodeError: a colour encoding (a visualisation, not class ids), a JPEG (lossy: it
            would invent class ids at edges) or a malformed image.
    """
    if is_compressed(msg):
        fmt = str(getattr(msg, "format", ""))
        if "jpeg" in fmt.lower() or "jpg" in fmt.lower():
            raise ImageDecodeError(f"label images must be lossless; got a JPEG CompressedImage ('{fmt}')")
        array = compressed_to_numpy(msg)
        described = f"format '{fmt}'"
    else:
        array = image_to_numpy(msg)
        described = f"encoding {getattr(msg, 'encoding', '?')}"
    if array.ndim != 2:
        raise ImageDecodeError(f"label images must hold one class id per pixel (mono8/mono16), got {described}")
    return array


def _decoded_encoding(array: np.ndarray) -> str:
    """The encoding that describes a decoded thermal array (for formats that name none)."""
    if array.ndim == 3:
        return "rgb8"
    return "mono16" if array.dtype == np.uint16 else "mono8"


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
        thermal = decode_thermal(pair.thermal_msg)
        encoding = message_encoding(pair.thermal_msg) or _decoded_encoding(thermal)
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
