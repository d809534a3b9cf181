"""``ivf-train tesg-guidance``: run the Semantic Information Generator over a dataset or a bag
and write its output to a :class:`~ivf_perception.guidance.GuidanceCache`.

Why offline: one pair costs two DiffEdit masks (3 UNet passes × ``num_maps_per_mask`` noise draws
each), a BLIP caption and three text encodings — seconds on a GPU, far too slow for a training
loop. Computed once, the guidance is read by training (:mod:`ivf_training.datasets.guidance`) and
by replay (the engine's ``cache`` provider).

Keys, so that readers find the entries:

* dataset folders: :func:`~ivf_training.datasets.guidance.dataset_pair_key`, the pair as the
  dataset's reader decodes it, thermal resized to the visible size (the key training computes);
* bags: :func:`~ivf_perception.guidance.pair_key` of the decoded messages (RGB uint8, thermal
  as recorded), the arrays replay decodes; the generator sees them normalised the way the engine
  normalises them (``prepare_rgb``/``prepare_thermal``, thermal resized to the RGB size). The
  cache stores registered pairs only: a bag whose thermal frames differ in size from its RGB
  frames is refused by the cache.

Existing entries are kept (the command resumes an interrupted run) unless ``overwrite``; pairs
whose caption holds no keyword are written with an empty mask and the ``no_keyword`` flag, and
are listed in the summary, never given an invented mask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ivf_perception.guidance import GuidanceCache, pair_key
from ivf_training.datasets import build_dataset
from ivf_training.datasets.guidance import dataset_pair_key, pair_sources, registered_thermal
from ivf_training.sig import SemanticInformationGenerator

__all__ = ["GuidancePair", "GuidanceRunSummary", "dataset_pairs", "bag_pairs", "write_guidance"]

_log = logging.getLogger(__name__)


@dataclass
class GuidancePair:
    """One pair to generate guidance for.

    Attributes:
        name: for messages and the summary.
        key: the cache key readers will look it up by.
        rgb: (H, W, 3) uint8 visible image, as the generator sees it.
        thermal: (H, W) float32 in [0, 1], registered to ``rgb``.
        key_arrays: the decoded arrays ``key`` was computed from (the cache recomputes it).
    """

    name: str
    key: str
    rgb: np.ndarray
    thermal: np.ndarray
    key_arrays: tuple[np.ndarray, np.ndarray]


@dataclass
class GuidanceRunSummary:
    """What :func:`write_guidance` did."""

    written: int = 0
    kept: int = 0
    no_keyword: list[str] = field(default_factory=list)
    empty_mask: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.written} entries written, {self.kept} existing entries kept"]
        for flag, names in (("no keyword in the caption (empty mask, flagged)", self.no_keyword),
                            ("keywords found but an empty mask", self.empty_mask)):
            if names:
                more = " ..." if len(names) > 10 else ""
                out.append(f"{len(names)} pairs with {flag}: {', '.join(names[:10])}{more}")
        return out


def dataset_pairs(kind: str, root: str | Path, split: str | None = None, *, max_pairs: int | None = None,
                  **options: Any) -> Iterator[GuidancePair]:
    """The pairs of a dataset folder (any file-based ``build_dataset`` kind), keyed as training keys them."""
    dataset = build_dataset(kind, root, split, max_pairs=max_pairs, check_labels=False, **options)
    for reader, index in pair_sources(dataset):
        rgb, thermal = reader.read_images(reader.files[index])
        thermal = registered_thermal(rgb, thermal)
        yield GuidancePair(reader.files[index].name, dataset_pair_key(reader, index), rgb, thermal, (rgb, thermal))


def bag_pairs(bag: str | Path, *, distro: str = "humble", rgb_topic: str | None = None,
              thermal_topic: str | None = None, max_pairs: int | None = None) -> Iterator[GuidancePair]:
    """The paired frames of a bag (the node's pairing), keyed by their decoded messages."""
    from ivf_perception.engine.config import PipelineConfig
    from ivf_perception.engine.preprocess import prepare_rgb, prepare_thermal
    from ivf_perception.io.bag_decode import decode_pair
    from ivf_perception.io.bag_inputs import open_bag_inputs
    from ivf_perception.io.bag_pairing import FrameStream
    from ivf_perception.io.errors import ImageDecodeError

    reader, topics = open_bag_inputs(Path(bag), distro, rgb_topic, thermal_topic, None, detect_label=False)
    try:
        count = 0
        for pair in FrameStream(reader, topics, PipelineConfig.from_values({})):
            if max_pairs is not None and count >= max_pairs:
                break
            name = f"{Path(bag).name}#{pair.index}"
            try:
                frame = decode_pair(pair)
            except ImageDecodeError as exc:
                _log.warning("%s: skipped, cannot decode: %s", name, exc)
                continue
            rgb = prepare_rgb(frame.rgb)
            thermal = registered_thermal(rgb, prepare_thermal(frame.thermal))
            count += 1
            yield GuidancePair(name, pair_key(frame.rgb, frame.thermal), rgb, thermal, (frame.rgb, frame.thermal))
    finally:
        reader.close()


def write_guidance(sig: SemanticInformationGenerator, cache: GuidanceCache, pairs: Iterable[GuidancePair], *,
                   overwrite: bool = False, progress: bool = False, total: int | None = None) -> GuidanceRunSummary:
    """Generate and store the guidance of every pair (entries already in ``cache`` are kept
    unless ``overwrite``)."""
    summary = GuidanceRunSummary()
    for pair in tqdm(pairs, disable=not progress, total=total, unit="pair", dynamic_ncols=True):
        if pair.key in cache and not overwrite:
            summary.kept += 1
            continue
        out = sig(pair.rgb, pair.thermal)
        cache.write(*pair.key_arrays, mask=out.mask.float(), text_tokens=out.text_tokens, caption=out.caption,
                    edited_caption=out.query, removed_keywords=out.removed, no_keyword="no_keyword" in out.flags,
                    masks={"mask_vis": out.mask_vis.float(), "mask_ir": out.mask_ir.float()}, overwrite=overwrite)
        summary.written += 1
        if "no_keyword" in out.flags:
            summary.no_keyword.append(pair.name)
        if "empty_mask" in out.flags:
            summary.empty_mask.append(pair.name)
    return summary
