"""Registration of the thermal image into the RGB camera frame, and resizing.

Why: thermal and RGB cameras on a real rig sit side by side with different lenses, so their
images are not pixel-aligned. The fusion networks assume aligned inputs; a 3x3 homography from
configuration (estimated once per rig, e.g. from a heated checkerboard) warps thermal into the RGB
image before fusion. A homography is exact for a planar scene or a negligible baseline and a good
approximation for distant scenes.

Convention: the homography maps thermal pixel coordinates to RGB pixel coordinates,
``[x_rgb, y_rgb, 1]^T ~ H @ [x_th, y_th, 1]^T``, with ``x`` the column, ``y`` the row and pixel
centres at integer coordinates (OpenCV's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .errors import HomographyError, IVFIOError

__all__ = ["validate_homography", "warp_thermal", "resize_to", "INTERPOLATIONS"]

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
# dtypes cv2.warpPerspective / cv2.resize handle for 1-4 channels
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
_MAX_COND = 1e12


def validate_homography(homography: Any) -> np.ndarray:
    """Check a homography and return it as a ``(3, 3)`` float64 array.

    Args:
        homography: a 3x3 array-like or a flat 9-element list in row-major order (the form a ROS
            parameter list takes).

    Raises:
        HomographyError: wrong size, non-numeric or non-finite entries, or a singular
            (non-invertible) matrix.
    """
    try:
        mat = np.asarray(homography, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HomographyError(
            f"homography must be 9 numbers (3x3 or a flat row-major list), got {homography!r}"
        ) from exc
    if mat.shape == (9,):
        mat = mat.reshape(3, 3)
    if mat.shape != (3, 3):
        raise HomographyError(
            f"homography must have shape (3, 3) or 9 elements in row-major order, got shape "
            f"{mat.shape}"
        )
    if not np.isfinite(mat).all():
        raise HomographyError(f"homography contains NaN or infinite values: {mat.tolist()}")
    if np.linalg.cond(mat) > _MAX_COND:
        raise HomographyError(
            f"homography is singular (not invertible): {mat.tolist()}; re-estimate it from at "
            "least 4 non-collinear point correspondences"
        )
    return mat


def _check_image(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[2] <= 4):
        raise IVFIOError(f"{name} must be (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise IVFIOError(f"{name} is empty (shape {image.shape})")
    if image.dtype.type not in _CV_DTYPES:
        raise IVFIOError(
            f"{name} has dtype {image.dtype}; supported: "
            f"{', '.join(np.dtype(d).name for d in _CV_DTYPES)} (convert labels/bools to uint8)"
        )


def _check_size(size: Sequence[int], name: str = "out_size") -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise IVFIOError(f"{name} must be (height, width), got {size!r}") from exc
    if height <= 0 or width <= 0:
        raise IVFIOError(f"{name} must be positive (height, width), got {size!r}")
    return height, width


def _restore_channels(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1; put it back so shapes round-trip."""
    if like.ndim == 3 and result.ndim == 2:
        return result[:, :, None]
    return result


def warp_thermal(
    thermal: np.ndarray,
    homography: Any,
    out_size: Sequence[int] | None = None,
    *,
    interpolation: str = "linear",
    border_value: float = 0.0,
) -> np.ndarray:
    """Warp a thermal image into the RGB frame with a homography (thermal -> RGB pixels).

    Args:
        thermal: ``(H, W)`` or ``(H, W, C)`` image (uint8, uint16, float32 ...).
        homography: 3x3 matrix or 9-element row-major list mapping thermal pixels to RGB pixels.
        out_size: ``(height, width)`` of the RGB image; ``None`` keeps the thermal size.
        interpolation: ``"linear"`` (default), ``"nearest"``, ``"cubic"`` or ``"area"``.
        border_value: value of RGB pixels that see no thermal pixel.

    Returns:
        The warped image of shape ``out_size`` (plus channels), same dtype. When the homography
        is (a multiple of) the identity and the size is unchanged, ``thermal`` itself is returned
        (no copy).

    Raises:
        HomographyError: see :func:`validate_homography`.
        IVFIOError: bad image, size or interpolation name.
    """
    _check_image(thermal, "thermal")
    mat = validate_homography(homography)
    height, width = thermal.shape[:2] if out_size is None else _check_size(out_size)
    flag = _interpolation_flag(interpolation)
    if ((height, width) == thermal.shape[:2] and mat[2, 2] != 0.0
            and np.allclose(mat / mat[2, 2], np.eye(3), rtol=0.0, atol=1e-12)):
        return thermal
    warped = cv2.warpPerspective(
        thermal,
        mat,
        (width, height),
        flags=flag,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )
    return _restore_channels(warped, thermal)


def _interpolation_flag(interpolation: str) -> int:
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise IVFIOError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}"
        ) from None


def resize_to(
    image: np.ndarray, size: Sequence[int], interpolation: str = "auto"
) -> np.ndarray:
    """Resize an image to ``(height, width)``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image.
        size: target ``(height, width)`` (note: OpenCV's ``dsize`` is ``(width, height)``; this
            function takes numpy order to avoid that classic mix-up).
        interpolation: ``"auto"`` (area when shrinking, linear when enlarging, the usual choice
            for photos), or ``"nearest"`` (mandatory for label maps), ``"linear"``, ``"cubic"``,
            ``"area"``.

    Returns:
        The resized image, same dtype and channel count; ``image`` itself when the size already
        matches.
    """
    _check_image(image, "image")
    height, width = _check_size(size, "size")
    if (height, width) == image.shape[:2]:
        return image
    if interpolation == "auto":
        shrinking = height * width < image.shape[0] * image.shape[1]
        flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    else:
        flag = _interpolation_flag(interpolation)
    resized = cv2.resize(image, (width, height), interpolation=flag)
    return _restore_channels(resized, image)
