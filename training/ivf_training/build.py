"""What a run is built from, read off its configuration: seed, device, precision, classes,
the model's starting weights and text features, and the datasets.

These are the steps :meth:`ivf_training.trainer.Trainer.from_config` takes before the loop
starts; each fails with a :class:`~ivf_training.config.ConfigError` that names the setting to
change, before anything is written to the run directory.
"""

from __future__ import annotations

import json
import logging
import random
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ivf_perception.engine import DEFAULT_WEIGHTS
from ivf_perception.engine.weights import WEIGHTS_FORMAT, WeightsInfo, load_weights, sidecar_path
from ivf_perception.guidance import GuidanceCache, GuidanceError
from ivf_perception.io.classes import CLASS_TABLES, MFNET_CLASSES
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors
from ivf_perception.models.cmfs.text_features import TextFeaturesError, text_features_for
from ivf_perception.models.registry import with_legacy_args
from ivf_perception.models.upfusion.text import load_text_embedding, prompt_embedding
from ivf_training.config import ConfigError, ModelConfig, TrainConfig
from ivf_training.datasets import RealPairsDataset, build_dataset, build_mix, default_split
from ivf_training.datasets.guidance import with_guidance

__all__ = [
    "TextGuided",
    "seed_everything",
    "resolve_classes",
    "resolve_device",
    "resolve_amp",
    "check_crop",
    "set_text_features",
    "load_initial_weights",
    "resolve_init_from",
    "freeze_seg_head",
    "has_labels",
    "warn_if_unlabelled",
    "build_datasets",
]

_log = logging.getLogger(__name__)


@runtime_checkable
class TextGuided(Protocol):
    """A model guided by CLIP text features of its class prompts (CMFS).

    A property of the model, not of the objective: any ``loss.kind`` may train a text-guided
    model, and it needs its features whichever loss it learns from.
    """

    has_text_features: bool

    def set_text_features(self, features: torch.Tensor) -> None: ...


@runtime_checkable
class PromptGuided(Protocol):
    """A model guided by the CLIP embedding of one fixed prompt (UP-Fusion)."""

    def has_text_embedding(self) -> bool: ...

    def set_text_embedding(self, text: torch.Tensor) -> None: ...


def _set_prompt_embedding(model: PromptGuided, m: ModelConfig) -> None:
    """UP-Fusion's prompt embedding from ``model.text_features`` (a file) or ``model.clip_weights``
    (open_clip ViT-B-32-quickgelu file, or ``random``); kept from ``init_from`` when neither is set."""
    if not (m.text_features or m.clip_weights):
        if model.has_text_embedding():
            return
        raise ConfigError(
            f"{m.variant} needs the CLIP embedding of its fixed prompt: set model.clip_weights to an open_clip "
            "ViT-B-32-quickgelu checkpoint of OpenAI's weights (or 'random' for tests and CPU checks: no real "
            "CLIP guidance), or model.text_features to a file holding the embedding"
        )
    try:
        text = load_text_embedding(m.text_features) if m.text_features else prompt_embedding(str(m.clip_weights))
    except TextFeaturesError as exc:
        raise ConfigError(str(exc)) from None
    model.set_text_embedding(text)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _voc_palette(n: int) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved class ids), distinct for any n ≤ 256."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append(r << 16 | g << 8 | b)
    return out


def resolve_classes(num_classes: int, names: Sequence[str], palette: Sequence[int],
                    dataset_kind: str | None = None) -> tuple[list[str], list[int]]:
    """Class names and palette: given ones, else the benchmark's table (``dataset_kind`` one of
    :data:`CLASS_TABLES`) when its size fits, else MFNet's for 9 classes, else generic ones."""
    table = CLASS_TABLES.get(dataset_kind or "")
    if table is None or len(table) != num_classes:
        table = CLASS_TABLES["mfnet"] if num_classes == len(MFNET_CLASSES) else None
    if not names:
        names = list(table.classes) if table else [f"class_{i}" for i in range(num_classes)]
    if not palette:
        palette = list(table.palette) if table else _voc_palette(num_classes)
    return list(names), list(palette)


def resolve_device(name: str) -> torch.device:
    """The training device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a valid torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=auto or cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision (always on the CPU)."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp != "auto":
            _log.info("amp=%s ignored: mixed precision is only used on CUDA (training on %s)", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp=bf16 requested but this GPU does not support bfloat16; use amp=fp16 or auto")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def check_crop(model: nn.Module, variant: str, crop: int, crop_width: int | None) -> None:
    """The training crop must be a multiple of the model's ``input_multiple`` (crops are not padded)."""
    multiple = int(getattr(model, "input_multiple", 1))
    for name, size in (("crop", crop), ("crop_width", crop_width)):
        if size is not None and size % multiple:
            lower, upper = size - size % multiple, size + multiple - size % multiple
            raise ConfigError(
                f"{name} {size} is not divisible by {variant}'s input_multiple {multiple}; "
                f"use {name}={max(lower, multiple)} or {name}={upper}"
            )


def set_text_features(model: nn.Module, m: ModelConfig, class_names: Sequence[str], cache_dir: Path) -> None:
    """Give a text-guided model (CMFS) the CLIP features of its class prompts (all classes but 0).

    Weights loaded with ``model.init_from`` already carry features; a configured source replaces
    them. Without either, the error lists what to provide. Prompt-guided models (UP-Fusion) get
    the embedding of their one prompt instead.
    """
    if isinstance(model, PromptGuided):
        _set_prompt_embedding(model, m)
        return
    if not isinstance(model, TextGuided):
        if m.text_features or m.clip_weights:
            raise ConfigError(f"{m.variant} is not text-guided; remove model.text_features / model.clip_weights")
        return
    if not (m.text_features or m.clip_weights) and model.has_text_features:
        return
    try:
        features = text_features_for(list(class_names[1:]), features_file=m.text_features,
                                     clip_weights=m.clip_weights, cache_dir=cache_dir)
    except TextFeaturesError as exc:
        raise ConfigError(str(exc)) from None
    model.set_text_features(features)


def _is_engine_weights(path: Path) -> bool:
    """Engine weights have a sidecar with the engine format; a run's ``best.json`` is not one."""
    side = sidecar_path(path)
    try:
        return side.is_file() and json.loads(side.read_text()).get("format") == WEIGHTS_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def resolve_init_from(init_from: str) -> Path:
    """The file ``model.init_from`` names: ``default`` is the bundled weights (the node's default)."""
    return DEFAULT_WEIGHTS if init_from == "default" else Path(init_from)


def load_initial_weights(model: torch.nn.Module, path: Path, reinit: Sequence[str] = ()) -> None:
    """Start from trained weights (fine-tuning, stage hand-over) instead of a random init.

    Accepts engine weights (with a JSON sidecar, read through the engine's loader so pickles
    are refused the same way) or a run's checkpoint ``.safetensors``. The tensors must fit the
    model exactly: a silent partial load would make the recipe lie about what it trained. The
    only exception is what ``reinit`` names (``model.reinit``): those submodules keep their
    fresh initialisation, whether or not the file has tensors for them.
    """
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} does not exist")
    submodules = dict(model.named_modules())
    unknown = [name for name in reinit if not name or name not in submodules]
    if unknown:
        raise ConfigError(f"model.reinit: not submodules of the model: {', '.join(map(repr, unknown))}")
    info: WeightsInfo | None = None
    if _is_engine_weights(path):
        state, info = load_weights(path)
    else:
        try:
            state = read_safetensors(path, what="model.init_from file")
        except TensorFileError as exc:
            raise ConfigError(str(exc)) from exc
    prefixes = tuple(f"{name}." for name in reinit)
    if prefixes:  # the file's tensors of those modules are replaced by the model's own
        fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}
        state = {**{k: v for k, v in state.items() if not k.startswith(prefixes)}, **fresh}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        hint = _switch_hint(model, info) if info is not None else ""
        raise ConfigError(f"model.init_from: {path} does not fit the configured model{hint}: {exc}") from exc
    _log.info("initialised the model from %s%s", path,
              f" (freshly initialised: {', '.join(reinit)})" if reinit else "")


def _switch_hint(model: nn.Module, info: WeightsInfo) -> str:
    """The sidecar's constructor arguments (legacy values filled in) the model was built with
    other values of: the likely reason why a weight file does not fit, named in the error
    instead of only its tensor keys."""
    config = getattr(model, "config", None)
    built = config().get("model_args", {}) if callable(config) else {}
    saved = with_legacy_args(info.variant, info.preset, info.model_args)
    return "".join(f"; its sidecar records {k}={v!r} (set model.overrides.{k} to match)"
                   for k, v in saved.items() if k in built and built[k] != v)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen module: it stays in eval mode whatever the model around it does."""
    return nn.Module.train(module, False)


def freeze_seg_head(model: nn.Module, variant: str) -> None:
    """Freeze the model's segmentation head (``model.freeze_seg_head``).

    ``requires_grad`` off keeps its parameters out of the optimiser (no update, no weight decay);
    pinning it in eval mode keeps its BatchNorm statistics from drifting towards data it is not
    trained on, so its outputs for a given feature map stay exactly those of ``init_from``.
    """
    head = getattr(model, "seg_head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"model.freeze_seg_head: {variant} has no segmentation head here "
                          "(model.num_classes is 0 or the variant has none); remove the setting")
    head.requires_grad_(False)
    head.train = types.MethodType(_stay_in_eval, head)  # type: ignore[method-assign]
    head.eval()
    _log.info("segmentation head frozen (%d parameters)", sum(p.numel() for p in head.parameters()))


def has_labels(description: Mapping[str, object]) -> bool:
    """Whether a dataset description (:func:`~ivf_training.datasets.describe_dataset`) holds any
    labelled sample: generated scenes always do, folder kinds count theirs, real pairs never."""
    parts = description.get("parts")
    if isinstance(parts, list):
        return any(has_labels(p) for p in parts if isinstance(p, Mapping))
    if description.get("kind") == "generated":
        return bool(description.get("count"))
    labelled = description.get("labelled")
    return isinstance(labelled, int) and labelled > 0


def warn_if_unlabelled(train_description: Mapping[str, object], num_classes: int, frozen_head: bool) -> bool:
    """Warn (and return True) when a segmentation model trains without a single label.

    Only the fusion losses train then; the user should know the label maps will not improve,
    and that without ``model.freeze_seg_head`` the head still drifts (weight decay, BatchNorm).
    """
    if num_classes == 0 or has_labels(train_description):
        return False
    advice = ("the segmentation head is frozen (model.freeze_seg_head), so the label maps stay those of "
              "model.init_from" if frozen_head else
              "set model.freeze_seg_head: true to keep the segmentation head exactly as it is (otherwise "
              "weight decay and BatchNorm statistics still change it while no loss trains it)")
    _log.warning("the training data has no labels: this run trains the fusion losses only and does not improve "
                 "segmentation; %s", advice)
    return True


def tesg_cache(cfg: TrainConfig) -> GuidanceCache | None:
    """The guidance cache of a ``loss.kind: tesg`` run (``loss.guidance_cache``), read with the
    settings it records; None for other kinds or without a cache.

    Raises:
        ConfigError: the folder is not a guidance cache.
    """
    folder = getattr(cfg.loss, "guidance_cache", None)
    if cfg.loss.kind != "tesg" or folder is None:
        return None
    try:
        return GuidanceCache(folder)
    except GuidanceError as exc:
        raise ConfigError(f"loss.guidance_cache: {exc}") from exc


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training mix and the validation set described by ``cfg.data``.

    ``train_folders`` and ``val_folders`` are read as ``cfg.data.kind`` through
    :func:`~ivf_training.datasets.build_dataset`, which lists missing or unmatched files and checks
    every label file against the class table now, before the first step, not hours into a run.
    """
    d, g = cfg.data, cfg.data.generated
    k = cfg.model.num_classes or None
    train_split = d.train_split or default_split(d.kind, "train")
    val_split = d.val_split or default_split(d.kind, "val")
    parts: list[tuple[Dataset, int]] = []
    if g.train_count:
        parts.append((build_dataset("generated", count=g.train_count, config=g.scene, start=g.train_start), 1))
    for root in d.train_folders:
        dataset = build_dataset(d.kind, root, train_split, num_classes=k, short_side=d.real_short_side,
                                **d.loader_options)
        parts.append((dataset, d.real_repeat))
    if d.train_real:
        parts.append((RealPairsDataset(d.train_real, short_side=d.real_short_side), d.real_repeat))
    cache = tesg_cache(cfg)
    if cfg.loss.kind == "tesg":
        guided = with_guidance([d for d, _ in parts], cache, cfg.loss.scene_object_masks)
        parts = [(g_part, times) for g_part, (_, times) in zip(guided, parts)]
    train = build_mix(parts)
    val_parts: list[Dataset] = []
    if g.val_count:
        val_parts.append(build_dataset("generated", count=g.val_count, config=g.scene, start=g.val_start))
    for root in d.val_folders:
        val_parts.append(build_dataset(d.kind, root, val_split, num_classes=k, short_side=d.real_short_side,
                                       max_pairs=d.val_max_pairs, **d.loader_options))
    if d.val_real:
        val_parts.append(RealPairsDataset(d.val_real, short_side=d.real_short_side, max_pairs=d.val_max_pairs))
    if cfg.loss.kind == "tesg" and val_parts:
        val_parts = with_guidance(val_parts, cache, cfg.loss.scene_object_masks)
    val = None if not val_parts else val_parts[0] if len(val_parts) == 1 else ConcatDataset(val_parts)
    return train, val
