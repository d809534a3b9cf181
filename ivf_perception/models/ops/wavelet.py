"""Multi-level 2-D Haar discrete wavelet transform and its inverse, for any H, W.

CMFS's wavelet branch (eq. 6) splits a feature map into a 2-level Haar pyramid, mixes the
sub-bands with an SSM and transforms back. Each level is one stride-2 convolution with the four
2×2 Haar kernels (its inverse the matching transposed convolution), applied to every channel as
its own image. Why our own op rather than ``pytorch_wavelets``: that package pulls in PyWavelets
and ``pkg_resources`` (setuptools < 80), none of which a ROS install resolves through rosdep, and
its custom autograd functions are opaque to exporters; plain convolutions need nothing but torch,
export to ONNX, and run in the input's dtype (float64 for ``gradcheck``) and on its device. The
coefficients equal ``pytorch_wavelets``' ``DWTForward(J, wave="haar", mode="zero")`` (checked
against recorded outputs in ``test/models/test_wavelet_reference.py``).

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

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import ShapeError, check_shape, checks_enabled

__all__ = ["DWT2", "IDWT2", "dwt2", "idwt2", "pack_subbands", "unpack_subbands"]

WAVELETS = ("haar",)
# The four 2×2 Haar kernels (outer products of the filters (1, 1)/√2 and (1, -1)/√2), in the
# band order LL, LH (low along W, high along H), HL, HH; orthonormal, so the inverse is the
# transposed convolution with the same kernels.
_HAAR_KERNELS = (
    ((0.5, 0.5), (0.5, 0.5)),
    ((0.5, 0.5), (-0.5, -0.5)),
    ((0.5, -0.5), (0.5, -0.5)),
    ((0.5, -0.5), (-0.5, 0.5)),
)


def _check_wave(wave: str) -> None:
    if wave not in WAVELETS:
        raise ValueError(f"Unknown wavelet {wave!r}; this op implements {', '.join(map(repr, WAVELETS))} only")


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}")


def _kernels(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The Haar kernels as a (4, 1, 2, 2) conv weight, cached per device and dtype.

    Built uncached while compiling or exporting: there the tensor is a fake one of the tracer,
    and a cached fake tensor would break the next eager call (an ONNX export that ran before
    any eager forward did that: "selective_scan_fwd ... with Meta tensors").
    """
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return _build_kernels(device, dtype)
    return _cached_kernels(device, dtype)


@functools.lru_cache(maxsize=32)
def _cached_kernels(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Built outside inference mode so a cache filled during inference still serves training."""
    with torch.inference_mode(False):
        return _build_kernels(device, dtype)


def _build_kernels(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(_HAAR_KERNELS, dtype=dtype, device=device).unsqueeze(1)


def _analyse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Haar level: (B, C, 2h, 2w) -> low (B, C, h, w), bands (B, C, 3, h, w)."""
    b, c, h, w = x.shape
    bands = F.conv2d(x.reshape(b * c, 1, h, w), _kernels(x.device, x.dtype), stride=2)
    bands = bands.reshape(b, c, 4, h // 2, w // 2)
    return bands[:, :, 0], bands[:, :, 1:]


def _synthesise(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_analyse`: low (B, C, h, w), bands (B, C, 3, h, w) -> (B, C, 2h, 2w)."""
    b, c, h, w = low.shape
    bands = torch.cat([low.unsqueeze(2), high], dim=2).reshape(b * c, 4, h, w)
    return F.conv_transpose2d(bands, _kernels(low.device, low.dtype), stride=2).reshape(b, c, 2 * h, 2 * w)


def dwt2(x: torch.Tensor, levels: int = 1, wave: str = "haar") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``levels``-level 2-D Haar DWT of each channel, after padding H, W to multiples of ``2**levels``.

    Args:
        x: feature map.
        levels: number of decomposition levels J.
        wave: the wavelet; only ``"haar"``.

    Returns:
        ``(yl, yh)`` in ``pytorch_wavelets.DWTForward``'s layout: the low-pass of the last
        level and one band tensor per level, finest first, bands ordered (LH, HL, HH).

    Shape:
        x: (B, C, H, W)  ->  yl: (B, C, H'/2**J, W'/2**J); yh[j]: (B, C, 3, H'/2**(j+1), W'/2**(j+1)),
        with H', W' = H, W rounded up to multiples of 2**J.

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
    yh = []
    for _ in range(levels):
        x, high = _analyse(x)
        yh.append(high)
    return x, yh


def idwt2(yl: torch.Tensor, yh: list[torch.Tensor], wave: str = "haar",
          size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
    """Inverse of :func:`dwt2`: reconstruct the map and crop it to ``size``.

    Args:
        yl: low-pass coefficients of the coarsest level.
        yh: band coefficients per level, finest first (as :func:`dwt2` returns them), each level
            exactly twice the size of the next.
        wave: the wavelet :func:`dwt2` used; only ``"haar"``.
        size: (H, W) of the map given to :func:`dwt2`; None keeps the padded size.

    Returns:
        The reconstructed feature map.

    Shape:
        yl: (B, C, h, w); yh[j]: (B, C, 3, h*2**(J-1-j), w*2**(J-1-j))  ->  (B, C, H, W)
    """
    check_shape(yl, "B C H W", name="yl")
    if not yh:
        raise ValueError("yh must hold the band coefficients of at least one level, got an empty list")
    _check_wave(wave)
    x = yl
    for j, high in reversed(list(enumerate(yh))):
        check_shape(high, "B C 3 H W", name=f"yh[{j}]", B=yl.shape[0], C=yl.shape[1],
                    H=x.shape[-2], W=x.shape[-1])
        x = _synthesise(x, high)
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
        wave: the wavelet; only ``"haar"``.

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
