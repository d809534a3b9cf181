"""Image-fusion quality metrics, computed the way the infrared/visible fusion literature does.

The reference most papers use is the Python ``Evaluator`` of the CDDFuse code base
(``Zhaozixiang1228/MMIF-CDDFuse``, ``utils/Evaluator.py``, run with scikit-image 0.19 and
scipy 1.7). Every metric here reimplements the same maths with numpy and OpenCV only (no scipy,
scikit-image or scikit-learn); where the reference depends on a library default, the default is
spelled out in the metric's docstring. Where DESIGN.md §6 fixes a convention, DESIGN wins (the
one place it changes a number is the SSIM data range, see :func:`ssim_pair`).

Conventions shared by every metric:

* Inputs are gray images as 2-D arrays ``(H, W)`` of gray levels in ``0..255`` (any real dtype;
  computed in float64). ``A`` is the infrared image (``ir``), ``B`` the visible image (``vi``)
  and ``F`` the fused image (``fused``). The three must have the same shape.
* :func:`to_gray_u8` turns what a reader or a model produces (uint8 RGB or gray, float RGB in
  [0, 1]) into that form the way the reference does: BT.601 luma, rounded to whole gray levels.
* No metric ever returns NaN or infinity. Degenerate inputs (constant images, images too small
  for a window, an all-black fused image) give the documented finite value instead.
* Non-finite pixels, non-2-D arrays, empty arrays and shape mismatches raise ``ValueError``
  (:class:`ivf_perception.checks.ShapeError` for shapes) naming the argument.

Use :func:`fusion_metrics` for the whole table (keys ``EN SD SF AG MI CC PSNR SCD VIF Qabf SSIM``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

__all__ = [
    "FUSION_METRIC_NAMES",
    "PSNR_CAP_DB",
    "to_gray_u8",
    "entropy",
    "std",
    "spatial_frequency",
    "average_gradient",
    "mutual_information",
    "correlation_coefficient",
    "psnr",
    "scd",
    "vif",
    "vif_pair",
    "qabf",
    "ssim",
    "ssim_pair",
    "fusion_metrics",
    "FusionMetricAccumulator",
]

#: Keys of :func:`fusion_metrics`, in table order.
FUSION_METRIC_NAMES: tuple[str, ...] = (
    "EN", "SD", "SF", "AG", "MI", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM",
)

#: PSNR is clipped to ``[-PSNR_CAP_DB, PSNR_CAP_DB]`` dB (identical images would give +inf,
#: an all-black fused image -inf).
PSNR_CAP_DB: float = 100.0


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _shape_error(message: str) -> Exception:
    # Imported lazily: ivf_perception.checks imports torch, which the metrics do not need.
    from ivf_perception.checks import ShapeError

    return ShapeError(message)


def _as_gray(x: Any, name: str) -> np.ndarray:
    """Validate one gray image (2-D, real, finite, non-empty) and return it as float64."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy array (H, W) of gray levels 0..255, got {type(x).__name__}; "
            "convert tensors with .cpu().numpy() and colour images with to_gray_u8()"
        )
    if x.ndim != 2:
        raise _shape_error(
            f"{name}: expected a 2-D gray image (H, W), got shape {x.shape}; "
            "convert colour images with to_gray_u8()"
        )
    if x.size == 0:
        raise _shape_error(f"{name}: image is empty, shape {x.shape}")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"{name}: expected an integer or float array, got dtype {x.dtype}")
    out = np.asarray(x, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: image contains NaN or infinite values")
    return out


def _as_triple(fused: Any, ir: Any, vi: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = _as_gray(fused, "fused")
    a = _as_gray(ir, "ir")
    b = _as_gray(vi, "vi")
    if not (f.shape == a.shape == b.shape):
        raise _shape_error(
            "fused, ir and vi must have the same shape, got "
            f"fused {f.shape}, ir {a.shape}, vi {b.shape}; resize or register the images first"
        )
    return f, a, b


def _levels(x: np.ndarray) -> np.ndarray:
    """Whole gray levels 0..255 (rounded half to even like numpy, then clipped) as int64."""
    return np.clip(np.round(x), 0, 255).astype(np.int64)


def to_gray_u8(image: Any) -> np.ndarray:
    """Prepare an image for the fusion metrics: gray levels ``0..255`` as float64 ``(H, W)``.

    This is DESIGN.md §6's preparation ("read as 8-bit, converted to gray by BT.601 and
    rounded"), identical to the reference reader (OpenCV ``BGR2GRAY`` on float32 pixels, then
    ``np.round``):

    * ``(H, W)`` or ``(H, W, 1)`` gray: passes unchanged.
    * ``(H, W, 3)`` **RGB** (channel order R, G, B as ``ivf_perception.io`` returns it; convert
      ``cv2.imread``'s BGR first): if the three channels are equal the first one passes
      unchanged, otherwise ``round(0.299 R + 0.587 G + 0.114 B)``.
    * dtype ``uint8`` (or any integer dtype with values in ``0..255``) is used as is.
    * float input must lie in ``[0, 1]`` (a model output); it is scaled by 255 and rounded per
      channel first, as if saved to an 8-bit file, then converted as above.

    Rounding is numpy's (half to even). Integer images with values above 255 (16-bit raw
    thermal), 4-channel images (alpha, or MFNet's RGB + thermal) and float images outside
    ``[0, 1]`` are refused: their 8-bit meaning is not defined here (apply the thermal gain
    control first, or use ``ivf_perception.metrics.prepare.prepare_for_metrics`` on images as
    read from files).

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` numpy array.

    Returns:
        float64 array ``(H, W)`` with whole values in ``0..255``.

    Raises:
        TypeError: not a numpy array, or a bool / complex / object dtype.
        ValueError: wrong number of dimensions or channels, values out of range, NaN.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"to_gray_u8: expected a numpy array (H, W) or (H, W, 3), got {type(image).__name__}; "
            "convert a C×H×W tensor with t.permute(1, 2, 0).cpu().numpy()"
        )
    x = image
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)):
        raise _shape_error(
            f"to_gray_u8: expected a gray (H, W) / (H, W, 1) or RGB (H, W, 3) image, got shape "
            f"{image.shape}; drop an alpha channel or split 4-channel RGB+thermal images first"
        )
    if x.size == 0:
        raise _shape_error(f"to_gray_u8: image is empty, shape {image.shape}")

    if x.dtype == np.bool_:
        raise TypeError("to_gray_u8: bool images are not gray images; pass uint8 or float in [0, 1]")
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype != np.uint8:
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi > 255:
                raise ValueError(
                    f"to_gray_u8: {x.dtype} image has values in [{lo}, {hi}], expected 0..255; "
                    "16-bit thermal images need gain control to 8 bits first, not a fixed scale "
                    "(ivf_perception.io.thermal.agc_percentile, or "
                    "ivf_perception.metrics.prepare.prepare_for_metrics(image, 'ir') for images as read)"
                )
        u8 = x.astype(np.uint8, copy=False)
    elif np.issubdtype(x.dtype, np.floating):
        xf = x.astype(np.float64, copy=False)
        if not np.isfinite(xf).all():
            raise ValueError("to_gray_u8: image contains NaN or infinite values")
        flo, fhi = float(xf.min()), float(xf.max())
        tol = 1e-6
        if flo < -tol or fhi > 1.0 + tol:
            raise ValueError(
                f"to_gray_u8: float images must be in [0, 1] (a model output), got values in "
                f"[{flo:g}, {fhi:g}]; for gray levels 0..255 pass uint8 "
                "(np.round(x).astype(np.uint8)) or call the metrics directly"
            )
        u8 = np.clip(np.round(xf * 255.0), 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"to_gray_u8: unsupported dtype {x.dtype}; pass uint8 or float in [0, 1]")

    if u8.ndim == 2:
        return u8.astype(np.float64)
    r, g, b = u8[:, :, 0], u8[:, :, 1], u8[:, :, 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return r.astype(np.float64)
    # Same arithmetic as the reference: float32 pixels through OpenCV's RGB->gray, then round.
    gray = cv2.cvtColor(np.ascontiguousarray(u8, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.round(gray).astype(np.float64)


# --------------------------------------------------------------------------------------------
# filters (numpy/OpenCV equivalents of the scipy calls the reference makes)
# --------------------------------------------------------------------------------------------


def _correlate_valid_sep(x: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """``scipy.signal.convolve2d(x, rot90(outer(k, k), 2), mode='valid')`` for a symmetric k.

    The output has shape ``(H - n + 1, W - n + 1)`` (``n = len(k)``) and is empty when the
    image is smaller than the window (the reference's scipy call would fail or swap its
    operands there; we treat "no valid position" as an empty result).
    """
    n = kernel_1d.size
    h, w = x.shape
    if h < n or w < n:
        return np.zeros((max(h - n + 1, 0), max(w - n + 1, 0)), dtype=np.float64)
    full = cv2.sepFilter2D(
        np.ascontiguousarray(x, dtype=np.float64), cv2.CV_64F, kernel_1d, kernel_1d,
        borderType=cv2.BORDER_CONSTANT,
    )
    c = n // 2
    return full[c:h - c, c:w - c]


def _convolve_same_zero(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``scipy.signal.convolve2d(x, kernel, mode='same')`` (zero padding) for a 3×3 kernel."""
    flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float64)
    return cv2.filter2D(
        np.ascontiguousarray(x, dtype=np.float64), cv2.CV_64F, flipped,
        borderType=cv2.BORDER_CONSTANT,
    )


# --------------------------------------------------------------------------------------------
# single-image metrics
# --------------------------------------------------------------------------------------------


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy of the 256-bin gray-level histogram of ``fused``, in bits.

    ``EN = -Σ_l p_l log2 p_l`` with ``p_l`` the fraction of pixels at level ``l``; values are
    rounded to whole levels and clipped to ``0..255`` first (the reference casts to uint8).

    Shape ``(H, W)``. Range ``[0, 8]``; a constant image gives 0.
    """
    f = _as_gray(fused, "fused")
    counts = np.bincount(_levels(f).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / f.size
    return float(np.sum(p * np.log2(1.0 / p))) + 0.0


def std(fused: np.ndarray) -> float:
    """SD: population standard deviation of ``fused`` (divides by ``H·W``, numpy's default).

    Shape ``(H, W)``. Range ``[0, 127.5]`` for 0..255 images; a constant image gives 0.
    """
    f = _as_gray(fused, "fused")
    return float(np.std(f))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: ``sqrt(mean(dx²) + mean(dy²))`` with forward differences.

    ``dx = F[:, 1:] - F[:, :-1]`` (``H·(W-1)`` values) and ``dy = F[1:, :] - F[:-1, :]``
    (``(H-1)·W`` values); each mean is over its own count. A direction without any difference
    (a single column or row) contributes 0.

    Shape ``(H, W)``. Range ``[0, 255·sqrt(2)]``; a constant image gives 0.
    """
    f = _as_gray(fused, "fused")
    dx = np.diff(f, axis=1)
    dy = np.diff(f, axis=0)
    rf = float(np.mean(dx * dx)) if dx.size else 0.0
    cf = float(np.mean(dy * dy)) if dy.size else 0.0
    return math.sqrt(rf + cf)


def _gradient_1d(f: np.ndarray, axis: int) -> np.ndarray:
    """Central differences inside, one-sided differences at the two borders; 0 if length 1."""
    g = np.zeros_like(f)
    n = f.shape[axis]
    if n < 2:
        return g
    fm = np.moveaxis(f, axis, 0)
    gm = np.moveaxis(g, axis, 0)
    gm[0] = fm[1] - fm[0]
    gm[-1] = fm[-1] - fm[-2]
    if n > 2:
        gm[1:-1] = (fm[2:] - fm[:-2]) / 2.0
    return g


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean over all ``H·W`` pixels of ``sqrt((Gx² + Gy²) / 2)``.

    ``Gx``/``Gy`` are central differences ``(F[x+1] - F[x-1]) / 2`` inside the image and
    one-sided differences ``F[1] - F[0]``, ``F[-1] - F[-2]`` on the borders (numpy's
    ``gradient``). Along an axis of length 1 the gradient is 0.

    Shape ``(H, W)``. Range ``[0, 255]``; a constant image gives 0.
    """
    f = _as_gray(fused, "fused")
    gx = _gradient_1d(f, 1)
    gy = _gradient_1d(f, 0)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# --------------------------------------------------------------------------------------------
# reference-based metrics
# --------------------------------------------------------------------------------------------


def _mutual_information_pair(x: np.ndarray, y: np.ndarray) -> float:
    """MI(x, y) in nats from the 256×256 joint histogram of whole gray levels."""
    joint = np.bincount((_levels(x) * 256 + _levels(y)).ravel(), minlength=256 * 256)
    joint = joint.reshape(256, 256).astype(np.float64)
    n = float(x.size)
    px = joint.sum(axis=1) / n
    py = joint.sum(axis=0) / n
    i, j = np.nonzero(joint)
    pij = joint[i, j] / n
    mi = float(np.sum(pij * (np.log(pij) - np.log(px[i]) - np.log(py[j]))))
    return max(mi, 0.0)  # exact maths is >= 0; clip rounding noise (as scikit-learn does)


def mutual_information(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """MI: ``MI(F, A) + MI(F, B)`` in nats (natural log).

    ``MI(X, Y) = Σ p(x, y) ln(p(x, y) / (p(x) p(y)))`` over the 256×256 joint histogram of whole
    gray levels (values rounded and clipped to 0..255; for integer images this equals the
    reference's ``sklearn.metrics.mutual_info_score`` on the flattened pixels).

    Shapes ``(H, W)`` each. Range ``[0, 2·ln 256 ≈ 11.09]``; ``MI(X, X) = EN(X)·ln 2`` so
    ``MI(F=A=B) = 2·EN·ln 2``. A constant image carries no information: its term is 0.
    """
    f, a, b = _as_triple(fused, ir, vi)
    return _mutual_information_pair(f, a) + _mutual_information_pair(f, b)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 if either input is constant (the reference gives NaN there)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    dx = x - x.mean()
    dy = y - y.mean()
    den = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if den == 0.0:
        return 0.0
    r = float(np.sum(dx * dy)) / den
    return min(max(r, -1.0), 1.0)


def correlation_coefficient(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """CC: ``(r(A, F) + r(B, F)) / 2`` with ``r`` the Pearson correlation over all pixels.

    Shapes ``(H, W)`` each. Range ``[-1, 1]``. A correlation with a constant image is
    undefined (0/0); it is taken as 0, so a constant ``F`` gives CC = 0.
    """
    f, a, b = _as_triple(fused, ir, vi)
    return (_pearson(a, f) + _pearson(b, f)) / 2.0


def psnr(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """PSNR: ``10·log10(max(F)² / ((MSE(F, A) + MSE(F, B)) / 2))`` in dB.

    The peak is the fused image's own maximum (the reference's convention, not 255). The result
    is clipped to ``[-PSNR_CAP_DB, PSNR_CAP_DB]`` = ``[-100, 100]`` dB: identical images (MSE 0)
    give +100, an all-black fused image with MSE > 0 gives -100.

    Shapes ``(H, W)`` each.
    """
    f, a, b = _as_triple(fused, ir, vi)
    mse = (float(np.mean((a - f) ** 2)) + float(np.mean((b - f) ** 2))) / 2.0
    if mse == 0.0:
        return PSNR_CAP_DB
    peak_sq = float(np.max(f)) ** 2
    if peak_sq == 0.0:
        return -PSNR_CAP_DB
    value = 10.0 * math.log10(peak_sq / mse)
    return min(max(value, -PSNR_CAP_DB), PSNR_CAP_DB)


def scd(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """SCD (sum of the correlations of differences): ``r(A, F - B) + r(B, F - A)``.

    ``r`` is the Pearson correlation. Shapes ``(H, W)`` each. Range ``[-2, 2]``. A constant
    operand makes its term 0 (e.g. ``F = B`` makes ``F - B`` constant), so ``SCD(F=A=B) = 0``.
    """
    f, a, b = _as_triple(fused, ir, vi)
    return _pearson(a, f - b) + _pearson(b, f - a)


# --------------------------------------------------------------------------------------------
# VIF
# --------------------------------------------------------------------------------------------

_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10


def _vif_window_1d(n: int) -> np.ndarray:
    """1-D factor of the reference's normalised ``n×n`` Gaussian window with sd ``n / 5``.

    The reference builds ``exp(-(x² + y²) / (2 sd²))``, zeroes entries below ``eps·max`` (never
    triggered for n <= 17: the smallest entry is ``exp(-25 (n-1)² / (4 n²)) > e^-6.25``) and
    normalises; that is exactly ``outer(g, g)`` with ``g`` the normalised 1-D Gaussian.
    """
    sd = n / 5.0
    m = (n - 1) / 2.0
    x = np.arange(n, dtype=np.float64) - m
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    return g / g.sum()


def _vif_num_den(ref: np.ndarray, dist: np.ndarray) -> tuple[float, float]:
    """Numerator and denominator of pixel-domain VIF, summed over the 4 scales."""
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3
        win = _vif_window_1d(n)
        if scale > 1:
            ref = _correlate_valid_sep(ref, win)[::2, ::2]
            dist = _correlate_valid_sep(dist, win)[::2, ::2]
        if ref.shape[0] < n or ref.shape[1] < n:
            continue  # no valid window position at this scale: contributes nothing
        mu1 = _correlate_valid_sep(ref, win)
        mu2 = _correlate_valid_sep(dist, win)
        sigma1_sq = _correlate_valid_sep(ref * ref, win) - mu1 * mu1
        sigma2_sq = _correlate_valid_sep(dist * dist, win) - mu2 * mu2
        sigma12 = _correlate_valid_sep(ref * dist, win) - mu1 * mu2

        sigma1_sq = np.maximum(sigma1_sq, 0.0)
        sigma2_sq = np.maximum(sigma2_sq, 0.0)

        g = sigma12 / (sigma1_sq + _VIF_EPS)
        sv_sq = sigma2_sq - g * sigma12

        flat1 = sigma1_sq < _VIF_EPS  # reference region without signal
        g[flat1] = 0.0
        sv_sq[flat1] = sigma2_sq[flat1]
        sigma1_sq[flat1] = 0.0

        flat2 = sigma2_sq < _VIF_EPS  # distorted region without signal
        g[flat2] = 0.0
        sv_sq[flat2] = 0.0

        neg = g < 0
        sv_sq[neg] = sigma2_sq[neg]
        g[neg] = 0.0
        sv_sq = np.maximum(sv_sq, _VIF_EPS)  # reference: sv_sq[sv_sq <= eps] = eps

        num += float(np.sum(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + _VIF_SIGMA_NSQ))))
        den += float(np.sum(np.log10(1.0 + sigma1_sq / _VIF_SIGMA_NSQ)))
    return num, den


def vif_pair(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain multi-scale visual information fidelity VIF(ref → dist) (Sheikh & Bovik).

    Four scales with Gaussian windows of size ``N = 17, 9, 5, 3`` and sd ``N / 5``; before
    scales 2..4 both images are filtered with that scale's window ('valid') and subsampled by 2
    (every other row and column, starting at the first). Local statistics use the same window,
    'valid' positions only; noise variance ``σn² = 2``; gains and variances are conditioned as
    in the reference (``eps = 1e-10``). Returns ``Σ_scales num / Σ_scales den`` with
    ``num = Σ log10(1 + g² σ_ref² / (σ_v² + σn²))`` and ``den = Σ log10(1 + σ_ref² / σn²)``.

    Shapes ``(H, W)`` each; all 4 scales have valid positions from 41×41 on, smaller images use
    the scales that fit. Range ``[0, ∞)`` (1 for ``dist = ref``; above 1 for contrast
    enhancement). Degenerate: when the denominator is 0 (``ref`` constant, or too small for any
    scale) the result is 1.0, the reference's NaN replacement.
    """
    r = _as_gray(ref, "ref")
    d = _as_gray(dist, "dist")
    if r.shape != d.shape:
        raise _shape_error(f"vif_pair: ref {r.shape} and dist {d.shape} must have the same shape")
    num, den = _vif_num_den(r, d)
    if den == 0.0:
        return 1.0
    return num / den


def vif(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """VIF: ``VIF(A → F) + VIF(B → F)`` (see :func:`vif_pair`); each ratio is formed per pair.

    Shapes ``(H, W)`` each. Range ``[0, ∞)``, 2 for ``F = A = B``.
    """
    f, a, b = _as_triple(fused, ir, vi)
    return vif_pair(a, f) + vif_pair(b, f)


# --------------------------------------------------------------------------------------------
# Qabf
# --------------------------------------------------------------------------------------------

_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_QABF_TG, _QABF_KG, _QABF_DG = 0.9994, -15.0, 0.5
_QABF_TA, _QABF_KA, _QABF_DA = 0.9879, -22.0, 0.8


def _qabf_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength and orientation, as the reference computes them."""
    sx = _convolve_same_zero(img, _SOBEL_X)
    sy = _convolve_same_zero(img, _SOBEL_Y)
    strength = np.sqrt(sx * sx + sy * sy)
    nz = sx != 0
    angle = np.full(img.shape, math.pi / 2.0)
    angle[nz] = np.arctan(sy[nz] / sx[nz])
    return strength, angle


def _qabf_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    gt = g_src > g_f
    lt = g_src < g_f
    eq = ~(gt | lt)
    ratio = np.zeros_like(g_src)
    ratio[gt] = g_f[gt] / g_src[gt]
    ratio[lt] = g_src[lt] / g_f[lt]
    ratio[eq] = g_f[eq]  # reference quirk: equal strengths give g_f, not 1 (see qabf docstring)
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2.0)
    q_g = _QABF_TG / (1.0 + np.exp(_QABF_KG * (ratio - _QABF_DG)))
    q_a = _QABF_TA / (1.0 + np.exp(_QABF_KA * (orient - _QABF_DA)))
    return q_g * q_a


def qabf(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> float:
    """Qabf (Xydeas & Petrović edge preservation), parameters as DESIGN §6 and the reference.

    Sobel responses by true 2-D convolution with zero padding ('same' size):
    ``sx = conv(I, [[-1,0,1],[-2,0,2],[-1,0,1]])``, ``sy = conv(I, [[1,2,1],[0,0,0],[-1,-2,-1]])``;
    strength ``g = sqrt(sx² + sy²)``, orientation ``α = arctan(sy / sx)`` (π/2 where sx = 0).
    Per source X ∈ {A, B}: relative strength ``G = min(gX, gF) / max(gX, gF)``, relative
    orientation ``Ā = 1 - |αX - αF| / (π/2)``; ``Q^XF = Tg / (1 + e^{kg (G - Dg)}) ·
    Ta / (1 + e^{ka (Ā - Da)})`` with L = 1, Tg 0.9994, kg −15, Dg 0.5, Ta 0.9879, ka −22,
    Da 0.8; ``Qabf = Σ (Q^AF gA + Q^BF gB) / Σ (gA + gB)``.

    Reference quirk kept for comparable numbers: where ``gX == gF`` the reference sets
    ``G = gF`` (not 1). For whole-level images equal non-zero strengths are >= 1, where the
    sigmoid is saturated, so the effect is below 0.1 %; pixels with ``gX = gF = 0`` carry no
    weight anyway.

    Shapes ``(H, W)`` each. Range ``[0, ~0.975]``: the sigmoid constants cap a perfect
    preservation at ``Tg/(1+e^{kg(1-Dg)})·Ta/(1+e^{ka(1-Da)}) ≈ 0.9748`` (≈ 0.9753 with the quirk),
    so ``Qabf(F=A=B) ≈ 0.975``, not 1. Degenerate: when both sources have no edge strength
    at all (only possible when both are all zero, because zero padding makes the border of any
    other constant image an edge) the result is 0.0.
    """
    f, a, b = _as_triple(fused, ir, vi)
    g_a, a_a = _qabf_edges(a)
    g_b, a_b = _qabf_edges(b)
    g_f, a_f = _qabf_edges(f)
    den = float(np.sum(g_a + g_b))
    if den == 0.0:
        return 0.0
    q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
    return float(np.sum(q_af * g_a + q_bf * g_b)) / den


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def ssim_pair(
    x: np.ndarray,
    y: np.ndarray,
    *,
    win_size: int = 7,
    data_range: float = 255.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM of two gray images, as ``skimage.metrics.structural_similarity`` computes it.

    scikit-image's defaults (``gaussian_weights=False``, ``use_sample_covariance=True``):
    local means, variances and covariance over a ``win_size × win_size`` uniform window;
    variances and covariance multiplied by ``NP / (NP - 1)`` with ``NP = win_size²`` (sample
    covariance); ``C1 = (k1·data_range)²``, ``C2 = (k2·data_range)²``;
    ``S = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``; the mean is taken
    over the positions whose window lies fully inside the image (scikit-image filters the whole
    image and then crops ``(win_size - 1) // 2`` pixels from every side, so its border mode
    never matters).

    ``data_range = 255`` follows DESIGN §6. The CDDFuse reference passes float32 images without
    ``data_range`` to scikit-image 0.19, which then uses the float dtype range (-1..1), i.e.
    ``data_range = 2`` (skimage computes in float32 then); pass ``data_range=2.0`` to reproduce
    it. The difference is large: on RoadScene with ``F`` the mean of the sources, ``SSIM(F, A) +
    SSIM(F, B)`` is about 1.48 with 255 and 0.95 with 2, and the SSIM values published with the
    CDDFuse evaluator (0.98 for CDDFuse on RoadScene) are on the ``data_range = 2`` scale.

    Shapes ``(H, W)`` each, at least ``win_size`` in both dimensions. Range ``[-1, 1]``; 1 for
    identical images. Never NaN: C1, C2 > 0, so two constant images give
    ``(2 c1 c2 + C1) / (c1² + c2² + C1)`` (1 when equal).
    """
    a = _as_gray(x, "x")
    b = _as_gray(y, "y")
    if a.shape != b.shape:
        raise _shape_error(f"ssim: x {a.shape} and y {b.shape} must have the same shape")
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"ssim: win_size must be a positive odd number, got {win_size}")
    if a.shape[0] < win_size or a.shape[1] < win_size:
        raise _shape_error(
            f"ssim: images of shape {a.shape} are smaller than the {win_size}×{win_size} window; "
            f"SSIM needs at least {win_size}×{win_size} pixels"
        )
    if data_range <= 0:
        raise ValueError(f"ssim: data_range must be positive, got {data_range}")
    box = np.full(win_size, 1.0 / win_size)
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1.0) if np_ > 1 else 1.0
    ux = _correlate_valid_sep(a, box)
    uy = _correlate_valid_sep(b, box)
    uxx = _correlate_valid_sep(a * a, box)
    uyy = _correlate_valid_sep(b * b, box)
    uxy = _correlate_valid_sep(a * b, box)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean(dtype=np.float64))


def ssim(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray, *, data_range: float = 255.0) -> float:
    """SSIM: ``SSIM(F, A) + SSIM(F, B)`` (see :func:`ssim_pair`: 7×7 uniform window, K1 0.01,
    K2 0.03, ``data_range`` 255 per DESIGN §6).

    Shapes ``(H, W)`` each, at least 7×7. Range ``[-2, 2]``; 2 for ``F = A = B``.
    """
    f, a, b = _as_triple(fused, ir, vi)
    return ssim_pair(f, a, data_range=data_range) + ssim_pair(f, b, data_range=data_range)


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def fusion_metrics(
    fused: Any, ir: Any, vi: Any, *, prepare: bool = True, ssim_data_range: float = 255.0
) -> dict[str, float]:
    """All eleven fusion metrics of one image triple.

    Args:
        fused: the fused image F.
        ir: the infrared source A.
        vi: the visible source B.
        prepare: if True (default) each image first goes through :func:`to_gray_u8`, so uint8
            RGB/gray images and float RGB/gray in [0, 1] are accepted. If False the images must
            already be 2-D gray levels 0..255 (e.g. the output of :func:`to_gray_u8`).
        ssim_data_range: SSIM's data range; 255 per DESIGN §6. The numbers published with the
            CDDFuse evaluator correspond to 2.0 (see :func:`ssim_pair`).

    Returns:
        ``{"EN", "SD", "SF", "AG", "MI", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM": float}`` in
        that order (:data:`FUSION_METRIC_NAMES`); every value is finite.

    Raises:
        ShapeError: the three images differ in height/width (message shows all three shapes),
            or are smaller than SSIM's 7×7 window.
        TypeError, ValueError: see :func:`to_gray_u8`.
    """
    images = {"fused": fused, "ir": ir, "vi": vi}
    if prepare:
        for name, image in images.items():
            try:
                images[name] = to_gray_u8(image)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"fusion_metrics: {name}: {exc}") from exc
    f, a, b = _as_triple(images["fused"], images["ir"], images["vi"])
    if f.shape[0] < 7 or f.shape[1] < 7:  # fail before computing anything
        raise _shape_error(f"fusion_metrics: images of shape {f.shape} are smaller than SSIM's 7×7 window")
    return {
        "EN": entropy(f),
        "SD": std(f),
        "SF": spatial_frequency(f),
        "AG": average_gradient(f),
        "MI": mutual_information(f, a, b),
        "CC": correlation_coefficient(f, a, b),
        "PSNR": psnr(f, a, b),
        "SCD": scd(f, a, b),
        "VIF": vif(f, a, b),
        "Qabf": qabf(f, a, b),
        "SSIM": ssim(f, a, b, data_range=ssim_data_range),
    }


class FusionMetricAccumulator:
    """Means of per-image fusion metrics (e.g. :func:`fusion_metrics`).

    The first :meth:`update` fixes the metric names; later updates must carry the same keys.

    Example:
        >>> acc = FusionMetricAccumulator()
        >>> acc.update({"EN": 6.0, "SD": 40.0}); acc.update({"EN": 7.0, "SD": 42.0})
        >>> acc.compute()
        {'EN': 6.5, 'SD': 41.0}
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self.count = 0

    def update(self, metrics: Mapping[str, float]) -> None:
        """Add one image's metrics.

        Raises:
            KeyError: the keys differ from the first update's (missing/extra keys named).
            ValueError: a value is not a finite number.
        """
        if not isinstance(metrics, Mapping) or not metrics:
            raise TypeError(f"expected a non-empty mapping of metric name to value, got {metrics!r}")
        if self.count and set(metrics) != set(self._sums):
            missing = sorted(set(self._sums) - set(metrics))
            extra = sorted(set(metrics) - set(self._sums))
            raise KeyError(f"metric names differ from the first update: missing {missing}, unexpected {extra}")
        values = {}
        for name, value in metrics.items():
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"metric {name!r} is not finite ({v}); fusion metrics are always finite")
            values[name] = v
        if not self.count:
            self._sums = {name: 0.0 for name in metrics}
        for name, v in values.items():
            self._sums[name] += v
        self.count += 1

    def compute(self) -> dict[str, float]:
        """Mean of every metric over the images added since the last :meth:`reset`.

        Raises:
            ValueError: nothing was added.
        """
        if not self.count:
            raise ValueError("FusionMetricAccumulator.compute(): no image was added; call update() first")
        return {name: s / self.count for name, s in self._sums.items()}

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._sums = {}
        self.count = 0
