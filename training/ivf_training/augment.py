"""Joint augmentation of an RGB/thermal/labels triple: random scale, random crop, flip, quarter turns.

Why joint: the three arrays describe the same pixels; any geometric change must be applied
identically or the network learns from misaligned pairs. Images are resampled bilinearly (with
antialiasing when shrinking) and labels with ``nearest-exact``, whose pixel-centre convention
matches bilinear ``align_corners=False``, so label borders stay on the image borders.

A sample may also carry a guidance ``mask`` (TeSG's foreground mask M, (1, H, W) in [0, 1]): it
is a per-pixel map like the labels and follows every geometric change with them
(``nearest-exact``, so a binary mask stays binary; padding is background, 0).

Determinism: every random number comes from the ``torch.Generator`` passed in, so a sample's
augmentation is a function of (seed, epoch, index) alone, independent of worker count and of
where a resumed run restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "JointAugment", "resize_sample", "pad_to", "crop_sample", "hflip_sample", "rot90_sample"]

IGNORE_INDEX = 255
"""Label value ignored by the loss and the metrics."""

_PIXEL_MAPS = ("rgb", "thermal", "labels", "mask", "valid")
"""The per-pixel arrays of a sample that every geometric change applies to."""

Sample = dict[str, object]


def resize_sample(sample: Sample, height: int, width: int) -> Sample:
    """Resize rgb/thermal (bilinear, antialiased when shrinking) and labels (nearest-exact)."""
    out = dict(sample)
    rgb: torch.Tensor = sample["rgb"]  # type: ignore[assignment]
    if tuple(rgb.shape[-2:]) == (height, width):
        return out
    antialias = height < rgb.shape[-2] or width < rgb.shape[-1]
    for key in ("rgb", "thermal"):
        img: torch.Tensor = sample[key]  # type: ignore[assignment]
        out[key] = F.interpolate(
            img[None], size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
        )[0].clamp_(0.0, 1.0)
    labels = sample.get("labels")
    if labels is not None:
        lab = labels[None, None].float()  # type: ignore[union-attr]
        out["labels"] = F.interpolate(lab, size=(height, width), mode="nearest-exact")[0, 0].long()
    mask = sample.get("mask")
    if mask is not None:
        out["mask"] = F.interpolate(mask[None], size=(height, width), mode="nearest-exact")[0]  # type: ignore[index]
    return out


def pad_to(sample: Sample, height: int, width: int) -> Sample:
    """Pad bottom/right to at least ``height``×``width``: images and mask with 0, labels with 255, and
    ``valid`` (H, W) bool (True on the real pixels; created all True when absent) with False.

    Why ``valid``: labels of 255 mark the padding for the segmentation loss, but a fusion loss
    compares images, and a black real pixel cannot be told from padding; CMFS's fusion loss
    excludes the padding with this mask, as its public code does.
    """
    rgb: torch.Tensor = sample["rgb"]  # type: ignore[assignment]
    ph, pw = max(0, height - rgb.shape[-2]), max(0, width - rgb.shape[-1])
    out = dict(sample)
    valid = sample.get("valid")
    if valid is None:
        valid = torch.ones(rgb.shape[-2:], dtype=torch.bool)
    out["valid"] = F.pad(valid, (0, pw, 0, ph), value=False) if ph or pw else valid  # type: ignore[arg-type]
    if not (ph or pw):
        return out
    for key in ("rgb", "thermal"):
        out[key] = F.pad(sample[key], (0, pw, 0, ph), value=0.0)  # type: ignore[arg-type]
    if sample.get("labels") is not None:
        out["labels"] = F.pad(sample["labels"], (0, pw, 0, ph), value=IGNORE_INDEX)  # type: ignore[arg-type]
    if sample.get("mask") is not None:
        out["mask"] = F.pad(sample["mask"], (0, pw, 0, ph), value=0.0)  # type: ignore[arg-type]
    return out


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop every array of the sample to the same window."""
    out = dict(sample)
    for key in _PIXEL_MAPS:
        value = sample.get(key)
        if value is not None:
            out[key] = value[..., top : top + height, left : left + width]  # type: ignore[index]
    return out


def hflip_sample(sample: Sample) -> Sample:
    """Mirror every array of the sample left-right."""
    out = dict(sample)
    for key in _PIXEL_MAPS:
        value = sample.get(key)
        if value is not None:
            out[key] = value.flip(-1)  # type: ignore[union-attr]
    return out


def rot90_sample(sample: Sample, k: int) -> Sample:
    """Rotate every array of the sample by ``k`` quarter turns (counter-clockwise) together."""
    out = dict(sample)
    for key in _PIXEL_MAPS:
        value = sample.get(key)
        if value is not None:
            out[key] = torch.rot90(value, k, dims=(-2, -1))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class JointAugment:
    """Random scale → random crop (padding when smaller) → random horizontal flip → random quarter turns.

    Args:
        crop: output height in pixels (and width, unless ``crop_width`` is given).
        scale_range: the scale factor is drawn log-uniformly from this range (so 0.5 and 2.0
            are equally likely around 1.0).
        hflip: flip with probability 0.5.
        crop_width: output width when it differs from the height (CMFS crops 480×640).
        rot90: rotate by 0, 90, 180 or 270 degrees, uniformly (MAFS trains with flips and 90°
            rotations). Needs a square crop: a quarter turn swaps height and width, and only
            the 180° turn would keep a non-square crop's shape (a silent restriction that
            changes the augmentation, so it is refused instead). When off, no random number is
            drawn for it, so existing recipes augment exactly as before.

    Shape:
        sample["rgb"]: (3, H, W), sample["thermal"]: (1, H, W), sample["labels"]: (H, W) or absent
        → the same keys at (crop, crop_width or crop), plus ``valid`` (crop, crop_width or crop)
        bool, False where the crop reaches into the padding (see :func:`pad_to`).
    """

    crop: int
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    crop_width: int | None = None
    rot90: bool = False

    def __post_init__(self) -> None:
        if self.crop < 1 or (self.crop_width is not None and self.crop_width < 1):
            raise ValueError(f"crop sizes must be >= 1, got {self.crop}x{self.crop_width}")
        if self.rot90 and self.crop_width not in (None, self.crop):
            raise ValueError(
                f"rot90 needs a square crop: a quarter turn of a {self.crop}x{self.crop_width} crop is "
                f"{self.crop_width}x{self.crop}; use crop_width=None or rot90=False"
            )
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")

    def __call__(self, sample: Sample, generator: torch.Generator) -> Sample:
        lo, hi = self.scale_range
        u = float(torch.rand((), generator=generator))
        scale = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        rgb: torch.Tensor = sample["rgb"]  # type: ignore[assignment]
        h, w = rgb.shape[-2:]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        out = resize_sample(sample, nh, nw)
        ch, cw = self.crop, self.crop_width or self.crop
        out = pad_to(out, ch, cw)
        h, w = out["rgb"].shape[-2:]  # type: ignore[union-attr]
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        out = crop_sample(out, top, left, ch, cw)
        flip = bool(torch.rand((), generator=generator) < 0.5)
        if self.hflip and flip:
            out = hflip_sample(out)
        if self.rot90:
            out = rot90_sample(out, int(torch.randint(0, 4, (), generator=generator)))
        for key in _PIXEL_MAPS:
            if out.get(key) is not None:
                out[key] = out[key].contiguous()  # type: ignore[union-attr]
        return out
