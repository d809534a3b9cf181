"""TeSG guidance in training samples: cached SIG output, generated-scene object masks, or none.

A TeSG run's samples carry, besides the sample contract of :mod:`.common`:

* ``mask``: (1, H, W) float in [0, 1], the foreground mask M at the sample's size (it follows
  every resize, crop, flip and turn of :mod:`ivf_training.augment` with the images);
* ``guided``: int64 scalar, where the guidance came from — :data:`GUIDANCE_NONE` (the model's
  fallback: no mask, stored text), :data:`GUIDANCE_CACHE` (mask and text tokens read from a
  :class:`~ivf_perception.guidance.GuidanceCache` written by ``ivf-train tesg-guidance``) or
  :data:`GUIDANCE_SCENE_OBJECTS` (generated scenes: the mask is the **scene generator's own
  object mask**, not SIG output; the text is the model's stored fallback text, because no text
  encoder runs here);
* ``text_tokens``: (L, d) float, only when a cache is used (zeros for the samples without cached
  text), so one batch can mix the three kinds.

Keys. A cache entry is found by :func:`~ivf_perception.guidance.pair_key` of the pair **as the
dataset's reader decodes it** (:meth:`PairDataset.read_images`: RGB uint8, thermal float32 in
[0, 1] resized to the visible size, before any other resize); ``ivf-train tesg-guidance`` keys its entries with
:func:`dataset_pair_key`, the same function. Every sample's entry is looked up when the dataset
is built: a missing one is an error listing the samples, never replaced by a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ivf_perception.guidance import GuidanceCache, pair_key
from ivf_perception.io.errors import DatasetError

from .common import PairDataset, Sample
from .folder import RealPairsDataset
from .generated import GeneratedScenesDataset

__all__ = ["GUIDANCE_NONE", "GUIDANCE_CACHE", "GUIDANCE_SCENE_OBJECTS", "GUIDANCE_BATCH_KEYS", "guidance_inputs",
           "pair_sources", "registered_thermal",
           "dataset_pair_key", "CachedGuidance", "SceneObjectGuidance", "NoGuidance", "with_guidance"]

GUIDANCE_NONE, GUIDANCE_CACHE, GUIDANCE_SCENE_OBJECTS = 0, 1, 2
GUIDANCE_BATCH_KEYS = ("mask", "guided", "text_tokens")
"""Batch keys the trainer hands to the objective besides rgb, thermal and labels."""

_SHOWN = 5


def guidance_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The guidance keys of a (collated) batch on ``device``: empty for samples without guidance,
    so only TeSG objectives ever receive them."""
    return {k: batch[k].to(device, non_blocking=True) for k in GUIDANCE_BATCH_KEYS if k in batch}


def pair_sources(dataset: Dataset) -> list[tuple[PairDataset, int]]:
    """``(reader, index)`` of every sample of a file-based dataset (a layout or real-pair folders).

    Raises:
        DatasetError: the dataset is not file-based (generated scenes have no files to key).
    """
    if isinstance(dataset, PairDataset):
        return [(dataset, i) for i in range(len(dataset))]
    if isinstance(dataset, RealPairsDataset):
        return list(dataset._index)
    raise DatasetError(f"guidance cache lookup needs a file-based dataset, got {type(dataset).__name__}")


def registered_thermal(rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """The thermal image at the visible image's size, resized as :meth:`PairDataset.__getitem__`
    does (area when shrinking, bilinear when enlarging)."""
    h, w = rgb.shape[:2]
    if thermal.shape[:2] == (h, w):
        return thermal
    shrink = thermal.shape[0] > h or thermal.shape[1] > w
    return cv2.resize(thermal, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def dataset_pair_key(reader: PairDataset, index: int) -> str:
    """The cache key of sample ``index``: :func:`pair_key` of the reader's decoded pair, thermal
    at the visible size (the cache stores registered pairs)."""
    rgb, thermal = reader.read_images(reader.files[index])
    return pair_key(rgb, registered_thermal(rgb, thermal))


def _resized_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    return F.interpolate(mask[None], size=(height, width), mode="nearest-exact")[0]


class CachedGuidance(Dataset):
    """Samples of a file-based dataset with their cached mask and text tokens.

    Args:
        base: a layout dataset or :class:`RealPairsDataset`.
        cache: the guidance cache (its settings are the ones it records).

    Raises:
        DatasetError: samples without an entry (named, with the command that makes them), or
            entries whose text tokens differ in shape.
    """

    def __init__(self, base: Dataset, cache: GuidanceCache) -> None:
        self.base = base
        self.cache = cache
        sources = pair_sources(base)
        self.keys = [dataset_pair_key(reader, i) for reader, i in sources]
        missing = [reader.files[i].name for (reader, i), key in zip(sources, self.keys) if key not in cache]
        if missing:
            raise DatasetError(
                f"{cache.root}: no guidance for {len(missing)} of {len(self.keys)} samples "
                f"({', '.join(missing[:_SHOWN])}{', ...' if len(missing) > _SHOWN else ''}); run "
                "`ivf-train tesg-guidance` over this dataset with the cache's settings")
        self.text_shape = tuple(cache.read_key(self.keys[0]).text_tokens.shape) if self.keys else ()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.base[index])
        entry = self.cache.read_key(self.keys[index])
        if tuple(entry.text_tokens.shape) != self.text_shape:
            raise DatasetError(f"{self.cache.root}: entry {entry.key[:16]}… has text tokens "
                               f"{tuple(entry.text_tokens.shape)}, others {self.text_shape}")
        h, w = sample["rgb"].shape[-2:]
        sample["mask"] = _resized_mask(entry.mask, h, w)
        sample["guided"] = torch.tensor(GUIDANCE_CACHE)
        sample["text_tokens"] = entry.text_tokens
        return sample

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.base, "describe", None)
        out = describe() if describe is not None else {"kind": type(self.base).__name__}
        return {**out, "guidance": {"source": "cache", "root": str(self.cache.root),
                                    "settings_hash": self.cache.settings_hash}}


class SceneObjectGuidance(Dataset):
    """Generated scenes whose mask is the scene generator's own object mask (every labelled
    object class; not SIG output), text from the model's fallback.

    Args:
        base: the generated scenes.
        text_shape: (L, d) of the zero text tokens to add when the batch mixes in cached samples.
    """

    def __init__(self, base: GeneratedScenesDataset, text_shape: Sequence[int] = ()) -> None:
        self.base = base
        self.text_shape = tuple(text_shape)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.base[index])
        labels = sample["labels"]
        sample["mask"] = ((labels > 0) & (labels != 255)).to(torch.float32)[None]
        sample["guided"] = torch.tensor(GUIDANCE_SCENE_OBJECTS)
        if self.text_shape:
            sample["text_tokens"] = torch.zeros(self.text_shape)
        return sample

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "guidance": {"source": "scene_objects"}}


class NoGuidance(Dataset):
    """Samples trained with the model's fallback (no mask, stored text): an all-zero mask for
    batching, ``guided`` = :data:`GUIDANCE_NONE`.

    Args:
        base: any dataset of the sample contract.
        text_shape: (L, d) of the zero text tokens to add when the batch mixes in cached samples.
    """

    def __init__(self, base: Dataset, text_shape: Sequence[int] = ()) -> None:
        self.base = base
        self.text_shape = tuple(text_shape)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = dict(self.base[index])
        sample["mask"] = torch.zeros((1, *sample["rgb"].shape[-2:]))
        sample["guided"] = torch.tensor(GUIDANCE_NONE)
        if self.text_shape:
            sample["text_tokens"] = torch.zeros(self.text_shape)
        return sample

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.base, "describe", None)
        out = describe() if describe is not None else {"kind": type(self.base).__name__}
        return {**out, "guidance": {"source": "fallback"}}


def with_guidance(parts: Sequence[Dataset], cache: GuidanceCache | None, scene_object_masks: bool) -> list[Dataset]:
    """The datasets of one mix with their guidance: generated scenes → object masks (or none),
    file-based datasets → the cache (or none). When a cache is used, every part carries text
    tokens of the cache's shape so the mix batches together.
    """
    cached = [CachedGuidance(p, cache) if cache is not None and not isinstance(p, GeneratedScenesDataset) else None
              for p in parts]
    shapes = {c.text_shape for c in cached if c is not None and c.text_shape}
    if len(shapes) > 1:
        raise DatasetError(f"{cache.root if cache else ''}: text tokens of different shapes {sorted(shapes)}")
    text_shape = next(iter(shapes), ())
    out: list[Dataset] = []
    for part, c in zip(parts, cached):
        if c is not None:
            out.append(c)
        elif isinstance(part, GeneratedScenesDataset) and scene_object_masks:
            out.append(SceneObjectGuidance(part, text_shape))
        else:
            out.append(NoGuidance(part, text_shape))
    return out
