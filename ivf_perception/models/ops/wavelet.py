"""Multi-level 2-D discrete wavelet transform and its inverse, for any H, W.

CMFS's wavelet branch (eq. 6) splits a feature map into a 2-level Haar pyramid, mixes the
sub-bands with an SSM and transforms back. The filter banks are ``pytorch_wavelets``' (the
same ``AFB2D``/``SFB2D`` autograd functions its ``DWTForward``/``DWTInverse`` run, with
PyWavelets' filter table), called directly so that the function form needs no module and
works in the input's dtype (float64 for ``gradcheck``) and on its device.

Why the padding: with sizes that are not multiples of ``2**levels`` the sub-bands of
successive levels stop being exact halves, which breaks the pyramid layout and CMFS's public
code (it pads by the wrong amount). :func:`dwt2` pads the bottom and right edges by
replication up to the next multiple of ``2**levels`` and :func:`idwt2` crops back to the size
it is given, so ``idwt2(*dwt2(x, J), size=x.shape[-2:]) == x`` for every H, W.

:func:`pack_subbands` / :func:`unpack_subbands` convert between the coefficient lists and the
usual single-image pyramid layout (Mallat's: the coarsest low-pass top left, each level's
LH/HL/HH to its right, below and diagonally), which is what CMFS's SSM scans.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import numpy as np
import pywt
import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import ShapeError, check_shape, checks_enabled

__all__ = ["DWT2", "IDWT2", "dwt2", "idwt2", "pack_subbands", "unpack_subbands"]

_DISCRETE_WAVELETS = frozenset(pywt.wavelist(kind="discrete"))


@functools.cache
def _lowlevel() -> ModuleType:
    """``pytorch_wavelets.dwt.lowlevel``, imported on first use.

    Why lazily: ``pytorch_wavelets/__init__`` loads its DT-CWT tables through ``pkg_resources``
    (setuptools, deprecated and absent from fresh Python 3.12 venvs), so a module-level import
    would make every model import depend on setuptools; only the DWT needs it. Its
    deprecation warning is silenced here, for that import only.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=DeprecationWarning)
            from pytorch_wavelets.dwt import lowlevel
    except ImportError as err:
        raise ImportError(
            "dwt2/idwt2 need pytorch_wavelets (pip install pytorch_wavelets==1.3.0 PyWavelets), which "
            f"imports pkg_resources: install setuptools<81 if that is what is missing ({err})"
        ) from err
    return lowlevel


def _zero_mode() -> int:
    """Zero-padding boundary mode: exact for Haar on even sizes, which the padding ensures."""
    return _lowlevel().mode_to_int("zero")


def _check_wave(wave: str) -> None:
    if wave not in _DISCRETE_WAVELETS:
        raise ValueError(f"Unknown wavelet {wave!r}; use a discrete PyWavelets name such as 'haar' or 'db2' "
                         f"(pywt.wavelist(kind='discrete'))")


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")


@functools.lru_cache(maxsize=32)
def _filters(wave: str, synthesis: bool, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(lo_col, hi_col, lo_row, hi_row) shaped for ``lowlevel.AFB2D``/``SFB2D``, cached.

    Analysis filters are time-reversed because ``conv2d`` correlates; synthesis filters are
    used as they are. Built in float64 and cast once, so float64 inputs get exact filters.
    Built outside inference mode so a cache filled during inference still serves training.
    """
    w = pywt.Wavelet(wave)
    lo, hi = (w.rec_lo, w.rec_hi) if synthesis else (w.dec_lo[::-1], w.dec_hi[::-1])
    with torch.inference_mode(False):
        lo_t, hi_t = (torch.tensor(np.asarray(f, dtype=np.float64), dtype=dtype, device=device) for f in (lo, hi))
        return lo_t.view(1, 1, -1, 1), hi_t.view(1, 1, -1, 1), lo_t.view(1, 1, 1, -1), hi_t.view(1, 1, 1, -1)


def dwt2(x: torch.Tensor, levels: int = 1, wave: str = "haar") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``levels``-level 2-D DWT of each channel, after padding H, W to multiples of ``2**levels``.

    Args:
        x: feature map.
        levels: number of decomposition levels J.
        wave: a discrete PyWavelets wavelet name.

    Returns:
        ``(yl, yh)`` as ``pytorch_wavelets.DWTForward`` returns them: the low-pass of the last
        level and one band tensor per level, finest first, bands ordered (LH, HL, HH).

    Shape:
        x: (B, C, H, W)  ->  yl: (B, C, H'/2**J, W'/2**J); yh[j]: (B, C, 3, H'/2**(j+1), W'/2**(j+1)),
        with H', W' = H, W rounded up to multiples of 2**J (Haar; longer wavelets add
        ``filter_length - 2`` boundary coefficients per level).

    Example:
        >>> yl, yh = dwt2(torch.ones(1, 1, 5, 6), levels=2)
        >>> yl.shape, [h.shape for h in yh]
        (torch.Size([1, 1, 2, 2]), [torch.Size([1, 1, 3, 4, 4]), torch.Size([1, 1, 3, 2, 2])])
    """
    check_shape(x, "B C H W", name="x")
    _check_levels(levels)
    _check_wave(wave)
    multiple = 2**levels
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    filters = _filters(wave, False, x.device, x.dtype)
    afb2d, mode = _lowlevel().AFB2D, _zero_mode()
    yh = []
    for _ in range(levels):
        x, high = afb2d.apply(x, *filters, mode)
        yh.append(high)
    return x, yh


def idwt2(yl: torch.Tensor, yh: list[torch.Tensor], wave: str = "haar",
          size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
    """Inverse of :func:`dwt2`: reconstruct the map and crop it to ``size``.

    Args:
        yl: low-pass coefficients of the coarsest level.
        yh: band coefficients per level, finest first (as :func:`dwt2` returns them).
        wave: the wavelet :func:`dwt2` used.
        size: (H, W) of the map given to :func:`dwt2`; None keeps the padded size.

    Returns:
        The reconstructed feature map.

    Shape:
        yl: (B, C, h, w); yh[j]: (B, C, 3, h_j, w_j)  ->  (B, C, H, W)
    """
    check_shape(yl, "B C H W", name="yl")
    if not yh:
        raise ValueError("yh must hold the band coefficients of at least one level, got an empty list")
    for j, high in enumerate(yh):
        check_shape(high, "B C 3 H W", name=f"yh[{j}]", B=yl.shape[0], C=yl.shape[1])
    _check_wave(wave)
    filters = _filters(wave, True, yl.device, yl.dtype)
    sfb2d, mode = _lowlevel().SFB2D, _zero_mode()
    x = yl
    for high in reversed(yh):
        x = x[..., : high.shape[-2], : high.shape[-1]]  # drop the boundary row/col a longer filter adds
        x = sfb2d.apply(x, high, *filters, mode)
    if size is None:
        return x
    h, w = size
    if checks_enabled() and (h > x.shape[-2] or w > x.shape[-1]):
        raise ShapeError(f"size: expected at most the reconstructed {tuple(x.shape[-2:])}, got ({h}, {w})")
    return x[..., :h, :w]


def pack_subbands(yl: torch.Tensor, yh: list[torch.Tensor]) -> torch.Tensor:
    """Lay a Haar pyramid out as one image (Mallat's layout), coarsest level top left.

    At each level the image is ``[[low, LH], [HL, HH]]``, where ``low`` is the coarser
    level's packed image; CMFS scans this image with its window SSM.

    Args:
        yl: low-pass coefficients of the coarsest level.
        yh: band coefficients per level, finest first, each level exactly twice the next.

    Returns:
        The packed pyramid.

    Shape:
        yl: (B, C, H/2**J, W/2**J); yh[j]: (B, C, 3, H/2**(j+1), W/2**(j+1))  ->  (B, C, H, W)
    """
    check_shape(yl, "B C H W", name="yl")
    packed = yl
    for j, high in reversed(list(enumerate(yh))):
        check_shape(high, "B C 3 H W", name=f"yh[{j}]", B=yl.shape[0], C=yl.shape[1],
                    H=packed.shape[-2], W=packed.shape[-1])
        lh, hl, hh = high.unbind(2)
        packed = torch.cat([torch.cat([packed, lh], dim=-1), torch.cat([hl, hh], dim=-1)], dim=-2)
    return packed


def unpack_subbands(packed: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Inverse of :func:`pack_subbands`.

    Args:
        packed: a packed Haar pyramid.
        levels: number of levels J it holds.

    Returns:
        ``(yl, yh)`` in :func:`dwt2`'s format.

    Shape:
        packed: (B, C, H, W), H and W multiples of 2**J  ->  yl: (B, C, H/2**J, W/2**J);
        yh[j]: (B, C, 3, H/2**(j+1), W/2**(j+1))
    """
    check_shape(packed, "B C H W", name="packed")
    _check_levels(levels)
    multiple = 2**levels
    if packed.shape[-2] % multiple or packed.shape[-1] % multiple:
        raise ShapeError(f"packed: expected H and W divisible by 2**levels = {multiple}, "
                         f"got shape {tuple(packed.shape)}; pad it as dwt2 does")
    yh = []
    low = packed
    for _ in range(levels):
        h, w = low.shape[-2] // 2, low.shape[-1] // 2
        yh.append(torch.stack([low[..., :h, w:], low[..., h:, :w], low[..., h:, w:]], dim=2))
        low = low[..., :h, :w]
    return low, yh


class DWT2(nn.Module):
    """Module form of :func:`dwt2` (no parameters; it stores the options).

    Args:
        levels: number of decomposition levels J.
        wave: a discrete PyWavelets wavelet name.

    Shape:
        x: (B, C, H, W)  ->  yl: (B, C, H'/2**J, W'/2**J); yh[j]: (B, C, 3, H'/2**(j+1), W'/2**(j+1))
    """

    def __init__(self, levels: int = 1, wave: str = "haar") -> None:
        super().__init__()
        _check_levels(levels)
        _check_wave(wave)
        self.levels = levels
        self.wave = wave

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return dwt2(x, self.levels, self.wave)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, wave={self.wave!r}"


class IDWT2(nn.Module):
    """Module form of :func:`idwt2` (no parameters; it stores the wavelet).

    Args:
        wave: the wavelet the forward transform used.

    Shape:
        yl: (B, C, h, w); yh[j]: (B, C, 3, h_j, w_j)  ->  (B, C, H, W)
    """

    def __init__(self, wave: str = "haar") -> None:
        super().__init__()
        _check_wave(wave)
        self.wave = wave

    def forward(self, yl: torch.Tensor, yh: list[torch.Tensor],
                size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
        return idwt2(yl, yh, self.wave, size)

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}"
