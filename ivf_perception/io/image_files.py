"""Reading and writing image files, and pairing visible/thermal folders.

Why: fusion datasets store the same kind of data in many ways: RoadScene's thermal is 8-bit gray
JPG, TNO and LLVIP store gray as three equal channels, MFNet packs RGB and thermal into one
4-channel PNG, radiometric cameras write 16-bit PNG/TIFF. These readers normalise all of that to
the model contract (RGB ``uint8`` ``(H, W, 3)``, thermal ``float32`` ``(H, W)`` in ``[0, 1]``) so
loaders never reimplement it.

Files are read through ``cv2.imdecode`` on the file's bytes (works for any path, including
non-ASCII ones where ``cv2.imread`` fails silently) with ``IMREAD_UNCHANGED``: the bit depth and
channel count are kept and EXIF orientation is ignored, so a pair's pixels stay aligned.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import (
    DatasetError,
    DatasetNotFoundError,
    ImageFileError,
    ImageFileNotFoundError,
    ThermalColourWarning,
)
from .thermal import BT601_LUMA, AGCConfig, agc_percentile

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImagePair",
    "PairListing",
    "read_image",
    "read_rgb",
    "read_thermal",
    "read_mfnet_4ch",
    "write_png",
    "find_pairs",
    "index_images",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Max channel difference (8-bit levels) still treated as "gray stored in 3 channels": JPEG's
# chroma quantisation can leave +-1..2 levels on genuinely gray images.
_GRAY_TOLERANCE = 2


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as stored: gray ``(H, W)`` or colour ``(H, W, C)`` in RGB(A) order.

    Args:
        path: PNG, JPG, BMP or TIFF file, 8 or 16 bit, gray, RGB or RGBA.

    Returns:
        ``(H, W)`` for gray, ``(H, W, 3)`` RGB, or ``(H, W, 4)`` RGBA; dtype as stored
        (uint8, uint16, or float32 for float TIFF).

    Raises:
        ImageFileNotFoundError: the file does not exist.
        ImageFileError: the path is a directory, unreadable, or not a decodable image.
    """
    p = Path(path)
    if not p.exists():
        parent = p.parent
        hint = "" if parent.is_dir() else f" (the folder {parent} does not exist either)"
        raise ImageFileNotFoundError(f"image file not found: {p}{hint}")
    if not p.is_file():
        raise ImageFileError(f"expected an image file, but {p} is a directory or special file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ImageFileError(f"cannot read image file {p}: {exc}") from exc
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
    if image is None:
        raise ImageFileError(
            f"cannot decode {p} ({len(raw)} bytes) as an image; supported formats: "
            f"{', '.join(IMAGE_EXTENSIONS)}. The file may be truncated or of another type."
        )
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1 or channels == 2:
            image = image[:, :, 0]
        elif channels == 3:
            image = image[:, :, ::-1]
        elif channels == 4:
            image = image[:, :, [2, 1, 0, 3]]
        else:
            raise ImageFileError(f"{p} has {channels} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale a colour image to uint8 with a fixed factor (colour is not gain-controlled)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.rint(image.astype(np.float32) / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageFileError(f"{path} has dtype {image.dtype}; expected uint8, uint16 or float")


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a visible image as ``(H, W, 3)`` uint8 RGB.

    Gray images are replicated to three channels, alpha is dropped, 16-bit colour is scaled by
    ``1/257`` (a fixed scale: visible cameras are not gain-controlled here) and float images in
    ``[0, 1]`` by 255.
    """
    p = Path(path)
    image = _to_uint8(read_image(p), p)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _gray_tolerance(dtype: np.dtype) -> float:
    """Channel-difference tolerance in the image's own units."""
    if dtype == np.uint16:
        return _GRAY_TOLERANCE * 257.0
    if np.issubdtype(dtype, np.floating):
        return _GRAY_TOLERANCE / 255.0
    return float(_GRAY_TOLERANCE)


def _collapse_colour(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Reduce a 3-channel thermal image to one channel (same units as the input)."""
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return np.ascontiguousarray(r)
    wide = rgb.astype(np.float32)
    spread = max(
        np.abs(wide[:, :, 0] - wide[:, :, 1]).max(), np.abs(wide[:, :, 1] - wide[:, :, 2]).max()
    )
    if spread <= _gray_tolerance(rgb.dtype):
        return wide.mean(axis=2)
    warnings.warn(
        f"thermal image {path} has colour (a false-colour palette?); converting it to BT.601 "
        "luminance, which only approximates the temperature ordering. Export thermal images as "
        "gray (or raw 16-bit) to avoid this.",
        ThermalColourWarning,
        stacklevel=3,
    )
    return wide @ BT601_LUMA


def read_thermal(
    path: str | os.PathLike[str], agc: AGCConfig | None = None
) -> np.ndarray:
    """Read a thermal image as ``(H, W)`` float32 in ``[0, 1]``.

    - 8-bit gray: ``x / 255`` (the camera or dataset already applied its gain control).
    - Gray stored as three equal channels (TNO, LLVIP; within 2 levels for JPEG artefacts): one
      channel. Alpha is ignored.
    - Genuinely colour (a false-colour palette): BT.601 luminance, with a
      :class:`~ivf_perception.io.errors.ThermalColourWarning`, because palette luminance only
      approximates the temperature ordering.
    - 16-bit (raw counts) or float (e.g. radiometric TIFF): percentile AGC (``agc``, default
      1/99 %), never a fixed ``/ 65535``.

    Raises:
        ImageFileNotFoundError, ImageFileError: as :func:`read_image`.
    """
    p = Path(path)
    image = read_image(p)
    source_dtype = image.dtype
    if image.ndim == 3:
        image = _collapse_colour(image[:, :, :3], p)
    if source_dtype == np.uint8:
        out = image.astype(np.float32) * np.float32(1.0 / 255.0)
        return np.clip(out, 0.0, 1.0, out=out)
    if not (source_dtype == np.uint16 or np.issubdtype(source_dtype, np.floating)):
        raise ImageFileError(f"{p} has dtype {source_dtype}; expected uint8, uint16 or float")
    cfg = agc if agc is not None else AGCConfig()
    return agc_percentile(image, cfg.low_pct, cfg.high_pct)


def read_mfnet_4ch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read MFNet's original 4-channel PNG: channels 0-2 RGB, channel 3 thermal.

    MFNet stores thermal in what image libraries call the alpha channel, so a plain image viewer
    (or :func:`read_rgb`) silently loses it; this reader splits the file explicitly.

    Returns:
        ``(rgb, thermal)``: ``(H, W, 3)`` uint8 and ``(H, W)`` float32 in ``[0, 1]``
        (``x / 255``, MFNet's thermal is 8-bit).

    Raises:
        ImageFileError: the file does not have exactly 4 channels of 8 bits.
    """
    p = Path(path)
    image = read_image(p)
    if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
        raise ImageFileError(
            f"{p} is not an MFNet 4-channel RGBT PNG: expected (H, W, 4) uint8, got "
            f"{image.shape} {image.dtype}. For separate vi/ir files use read_rgb/read_thermal."
        )
    rgb = np.ascontiguousarray(image[:, :, :3])
    thermal = image[:, :, 3].astype(np.float32) * np.float32(1.0 / 255.0)
    return rgb, thermal


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write an array as PNG, creating parent folders.

    Args:
        path: destination file (``.png`` is not enforced, the content is always PNG).
        array: ``(H, W)`` gray / class ids, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8 or
            uint16 (RGB order in; converted to OpenCV's BGR internally).

    Returns:
        The path written.

    Raises:
        ImageFileError: unsupported dtype/shape, or the file cannot be written.
    """
    p = Path(path)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"write_png expects a numpy array, got {type(array).__name__}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageFileError(
            f"write_png needs uint8 or uint16 data, got {array.dtype} for {p}; convert floats "
            "in [0, 1] with np.rint(x * 255).astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        bgr = array
    elif array.ndim == 3 and array.shape[2] == 3:
        bgr = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        bgr = array[:, :, [2, 1, 0, 3]]
    else:
        raise ImageFileError(
            f"write_png needs (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape} for {p}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageFileError(f"cannot write an empty image (shape {array.shape}) to {p}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:  # pragma: no cover - OpenCV failure
        raise ImageFileError(f"OpenCV could not encode a {array.shape} {array.dtype} image as PNG")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(encoded.tobytes())
    except OSError as exc:
        raise ImageFileError(f"cannot write {p}: {exc}") from exc
    return p


@dataclass(frozen=True)
class ImagePair:
    """One matched visible/thermal pair."""

    stem: str
    ir_path: Path
    vi_path: Path


@dataclass(frozen=True)
class PairListing:
    """Result of :func:`find_pairs`: matched pairs plus what could not be matched.

    Attributes:
        pairs: matched pairs sorted by stem.
        missing_vi: stems present in the thermal folder without a visible counterpart.
        missing_ir: stems present in the visible folder without a thermal counterpart.
    """

    pairs: list[ImagePair] = field(default_factory=list)
    missing_vi: list[str] = field(default_factory=list)
    missing_ir: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ImagePair]:
        return iter(self.pairs)

    @property
    def stems(self) -> list[str]:
        """Stems of the matched pairs, in order."""
        return [pair.stem for pair in self.pairs]


def index_images(folder: Path, role: str) -> dict[str, Path]:
    """Map stem -> file for the image files directly inside ``folder``, in name order.

    Raises:
        DatasetNotFoundError: ``folder`` is missing or not a directory.
        DatasetError: two images share a stem (a pair would be ambiguous).
    """
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise DatasetNotFoundError(f"{role} folder {folder} {what}")
    index: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if entry.stem in index:
            raise DatasetError(
                f"{role} folder {folder} holds two images with the stem {entry.stem!r} "
                f"({index[entry.stem].name}, {entry.name}); keep one so pairs are unambiguous"
            )
        index[entry.stem] = entry
    return index


def _sample(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown or "none"


def find_pairs(ir_dir: str | os.PathLike[str], vi_dir: str | os.PathLike[str]) -> PairListing:
    """Match thermal and visible images by file stem (``ir/0001.png`` <-> ``vi/0001.jpg``).

    Extensions may differ between the folders and are matched case-insensitively
    (png, jpg, jpeg, bmp, tif, tiff); other files and hidden files are ignored. Stems are
    compared exactly (case-sensitive), as file systems on robots are.

    Returns:
        A :class:`PairListing`; unmatched stems are reported, never an error.

    Raises:
        DatasetNotFoundError: a folder does not exist.
        DatasetError: no stem matches (with samples of both folders), or one folder has two
            images with the same stem.
    """
    ir_root, vi_root = Path(ir_dir), Path(vi_dir)
    ir_files = index_images(ir_root, "thermal (ir)")
    vi_files = index_images(vi_root, "visible (vi)")
    common = sorted(ir_files.keys() & vi_files.keys())
    if not common:
        raise DatasetError(
            f"no image stems match between {ir_root} ({len(ir_files)} images: "
            f"{_sample(sorted(ir_files))}) and {vi_root} ({len(vi_files)} images: "
            f"{_sample(sorted(vi_files))}); pairs must share the file name without extension"
        )
    return PairListing(
        pairs=[ImagePair(stem, ir_files[stem], vi_files[stem]) for stem in common],
        missing_vi=sorted(ir_files.keys() - vi_files.keys()),
        missing_ir=sorted(vi_files.keys() - ir_files.keys()),
    )
