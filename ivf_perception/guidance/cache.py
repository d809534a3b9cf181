"""The on-disk guidance cache: TeSG's mask, text tokens and caption per image pair.

Why a cache: the Semantic Information Generator (BLIP caption + two DiffEdit masks + the text
encoder) costs seconds per pair on a GPU and cannot run in a training loop or at 30 Hz, but its
output depends only on the image pair and the generator's settings. It is computed once
(``ivf-train tesg-guidance``) and read by training, replay and the engine's ``cache`` provider.

Keys. An entry is keyed by :func:`pair_key`, a SHA-256 over the dtype, shape and bytes of the
*decoded* arrays (RGB H×W×3, thermal H×W raw counts, before gain control, registration or
normalisation), so the key is the same whether the pair came from a dataset folder or a bag and
independent of file names. The cache as a whole is tied to one settings mapping (checkpoints,
DiffEdit numbers, keyword list...), identified by :func:`settings_hash`.

Layout under ``root``::

    cache.json                       {"format", "settings", "settings_hash"}
    entries/<k[:2]>/<k>.safetensors  mask (1×H×W), text_tokens (L×d), optional mask_vis, mask_ir
    entries/<k[:2]>/<k>.json         caption, edited_caption, removed_keywords, no_keyword,
                                     settings_hash, image sizes

Masks are stored as float16 (exact for binary masks), tokens as float16 (the SD text encoders'
own half precision; half the size of float32); both are read back as float32.

Nothing is ever replaced silently: reading a pair that has no entry raises
:class:`GuidanceNotCachedError`; opening a cache with other settings, or reading an entry whose
recorded settings differ, raises :class:`StaleGuidanceError`; writing over an existing entry needs
``overwrite=True``. Files are written under a temporary name and renamed, so a reader never sees
half an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ivf_perception.guidance.guidance import Guidance, GuidanceError
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors

__all__ = [
    "CACHE_FORMAT",
    "GuidanceCache",
    "GuidanceCacheError",
    "GuidanceEntry",
    "GuidanceNotCachedError",
    "StaleGuidanceError",
    "pair_key",
    "settings_hash",
]

CACHE_FORMAT = "ivf-tesg-guidance-1"
"""Written to ``cache.json``; a cache of another format is refused, not guessed at."""


class GuidanceCacheError(GuidanceError):
    """The guidance cache is missing, unreadable or inconsistent (the message names the file)."""


class GuidanceNotCachedError(GuidanceCacheError, LookupError):
    """No entry for this image pair: the generator has not been run on it."""


class StaleGuidanceError(GuidanceCacheError):
    """The cache or entry was made with other generator settings than the ones asked for."""


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``settings`` (key order does not matter).

    Raises:
        GuidanceCacheError: ``settings`` is not JSON data (strings, numbers, lists, mappings).
    """
    try:
        text = _canonical_json(dict(settings))
    except (TypeError, ValueError) as exc:
        raise GuidanceCacheError(f"guidance settings must be plain JSON data (str, number, list, dict): {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def _image_array(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise GuidanceCacheError(f"{name}: the cache key is computed on the decoded numpy image "
                                 f"(H×W×3 RGB, H×W thermal), got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise GuidanceCacheError(f"{name}: expected an H×W or H×W×C image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def pair_key(rgb: np.ndarray, thermal: np.ndarray) -> str:
    """The cache key of an image pair: SHA-256 (hex) over each array's dtype, shape and bytes.

    Args:
        rgb: the decoded visible image, H×W×3.
        thermal: the decoded thermal image, H×W (or H×W×1) raw values.

    Raises:
        GuidanceCacheError: an argument is not a numpy image.
    """
    digest = hashlib.sha256()
    for name, image in (("rgb", rgb), ("thermal", thermal)):
        array = _image_array(image, name)
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GuidanceEntry:
    """One cached pair: the generator's output and what it was computed from.

    Attributes:
        key: :func:`pair_key` of the pair.
        mask: 1×H×W float32 mask M = M_vis ∪ M_ir in [0, 1].
        text_tokens: L×d float32 text-encoder tokens F_t of ``caption``.
        caption: the captioner's text T.
        edited_caption: T̂, the caption with the keywords removed.
        removed_keywords: the keywords removed (every occurrence), in order.
        no_keyword: True when the caption held no keyword: T̂ = T and the mask is all background
            (a flagged fallback, never an invented mask).
        masks: optional per-modality masks (``mask_vis``, ``mask_ir``), each 1×H×W.
        settings_hash: the generator settings the entry was made with.
    """

    key: str
    mask: torch.Tensor
    text_tokens: torch.Tensor
    caption: str = ""
    edited_caption: str = ""
    removed_keywords: tuple[str, ...] = ()
    no_keyword: bool = False
    masks: Mapping[str, torch.Tensor] = field(default_factory=dict)
    settings_hash: str = ""

    def guidance(self, device: torch.device | str | None = None) -> Guidance:
        """The entry as a batch-of-one :class:`Guidance` (source ``cache``, age 0)."""
        return Guidance(mask=self.mask[None].to(device), text_tokens=self.text_tokens[None].to(device),
                        source="cache")


def _as_mask(value: Any, name: str, height: int, width: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] != 1 or tuple(tensor.shape[1:]) != (height, width):
        raise GuidanceCacheError(f"{name}: expected a {height}x{width} mask (H×W or 1×H×W, the image size), "
                                 f"got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise GuidanceCacheError(f"{name}: expected a floating mask in [0, 1], got {tensor.dtype}")
    if tensor.numel() and not (float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0):
        raise GuidanceCacheError(f"{name}: mask values must lie in [0, 1]")
    return tensor.detach().to("cpu", torch.float16).contiguous()


class GuidanceCache:
    """A folder of guidance entries made with one settings mapping.

    Args:
        root: the cache folder.
        settings: the generator settings the caller expects (writer: the ones it runs with).
            ``None`` (readers such as replay) accepts the settings the cache records.

    Raises:
        GuidanceCacheError: ``settings`` is None and ``root`` holds no ``cache.json``, or the
            file is unreadable or of another format.
        StaleGuidanceError: ``root`` records other settings than ``settings``.
    """

    def __init__(self, root: str | os.PathLike[str], settings: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self._index = self.root / "cache.json"
        recorded = self._read_index()
        if settings is None:
            if recorded is None:
                raise GuidanceCacheError(f"{self.root}: not a guidance cache (no cache.json); create it with "
                                         f"`ivf-train tesg-guidance` or pass the generator settings")
            self.settings: dict[str, Any] = dict(recorded["settings"])
        else:
            settings_hash(settings)  # a named error for settings that are not JSON data
            self.settings = json.loads(_canonical_json(dict(settings)))  # tuples -> lists, as read back
        self.settings_hash = settings_hash(self.settings)
        if recorded is not None and recorded["settings_hash"] != self.settings_hash:
            raise StaleGuidanceError(
                f"{self._index}: the cache was made with other generator settings "
                f"({_settings_diff(recorded['settings'], self.settings)}); use another cache folder "
                f"or regenerate it with these settings")

    def _read_index(self) -> dict[str, Any] | None:
        if not self._index.is_file():
            return None
        try:
            data = json.loads(self._index.read_text())
        except (OSError, ValueError) as exc:
            raise GuidanceCacheError(f"{self._index}: unreadable guidance cache index ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT \
                or not isinstance(data.get("settings"), dict):
            raise GuidanceCacheError(f"{self._index}: not a {CACHE_FORMAT} guidance cache index")
        if data.get("settings_hash") != settings_hash(data["settings"]):
            raise GuidanceCacheError(f"{self._index}: the recorded settings_hash does not match the settings "
                                     f"(edited by hand?)")
        return data

    def _paths(self, key: str) -> tuple[Path, Path]:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise GuidanceCacheError(f"not a guidance cache key (64 hex digits): {key!r}")
        folder = self.root / "entries" / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._paths(key)[1].is_file()

    def has(self, rgb: np.ndarray, thermal: np.ndarray) -> bool:
        """Whether the pair has an entry (of any settings; :meth:`read` checks them)."""
        return pair_key(rgb, thermal) in self

    def keys(self) -> list[str]:
        """Keys of every entry, sorted."""
        return sorted(p.stem for p in (self.root / "entries").glob("*/*.json"))

    def write(self, rgb: np.ndarray, thermal: np.ndarray, *, mask: Any, text_tokens: Any, caption: str = "",
              edited_caption: str = "", removed_keywords: Sequence[str] = (), no_keyword: bool = False,
              masks: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
        """Store the generator's output for one pair; returns its key.

        Args:
            rgb, thermal: the decoded pair (the key is computed from them).
            mask: H×W or 1×H×W floating mask in [0, 1], the images' size.
            text_tokens: L×d floating text tokens.
            caption, edited_caption, removed_keywords, no_keyword: as :class:`GuidanceEntry`.
            masks: optional per-modality masks, e.g. ``{"mask_vis": ..., "mask_ir": ...}``.
            overwrite: replace an existing entry (otherwise that is an error).

        Raises:
            GuidanceCacheError: sizes or dtypes wrong, or the entry exists and ``overwrite`` is False.
        """
        key = pair_key(rgb, thermal)
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        if tuple(thermal.shape[:2]) != (height, width):
            raise GuidanceCacheError(f"rgb is {height}x{width} but thermal is {thermal.shape[0]}x{thermal.shape[1]}; "
                                     f"cache guidance for registered pairs of one size")
        tokens = torch.as_tensor(text_tokens)
        if tokens.ndim != 2 or not tokens.is_floating_point() or 0 in tokens.shape:
            raise GuidanceCacheError(f"text_tokens: expected a floating L×d tensor, "
                                     f"got {tokens.dtype} {tuple(tokens.shape)}")
        if not torch.isfinite(tokens).all():
            raise GuidanceCacheError("text_tokens: non-finite values (NaN/inf)")
        tensors = {"mask": _as_mask(mask, "mask", height, width),
                   "text_tokens": tokens.detach().to("cpu", torch.float16).contiguous()}
        for name, value in (masks or {}).items():
            if name in tensors:
                raise GuidanceCacheError(f"masks: the name {name!r} is reserved")
            tensors[name] = _as_mask(value, name, height, width)
        tensor_path, json_path = self._paths(key)
        if json_path.exists() and not overwrite:
            raise GuidanceCacheError(f"{json_path}: an entry for this pair exists; pass overwrite=True to replace it")
        record = {"key": key, "caption": str(caption), "edited_caption": str(edited_caption),
                  "removed_keywords": [str(k) for k in removed_keywords], "no_keyword": bool(no_keyword),
                  "settings_hash": self.settings_hash, "height": height, "width": width,
                  "text_shape": list(tokens.shape)}
        self._write_index()
        tensor_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_tensors = tensor_path.with_name(tensor_path.name + ".tmp")
        tmp_json = json_path.with_name(json_path.name + ".tmp")
        save_file(tensors, str(tmp_tensors), metadata={"format": CACHE_FORMAT, "key": key,
                                                       "settings_hash": self.settings_hash})
        tmp_json.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp_tensors.replace(tensor_path)
        tmp_json.replace(json_path)  # the JSON last: an entry exists once its JSON does
        return key

    def _write_index(self) -> None:
        if self._index.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._index.with_name("cache.json.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "settings": self.settings,
                                   "settings_hash": self.settings_hash}, indent=1, sort_keys=True) + "\n")
        tmp.replace(self._index)

    def read(self, rgb: np.ndarray, thermal: np.ndarray) -> GuidanceEntry:
        """The entry of a decoded pair.

        Raises:
            GuidanceNotCachedError: no entry (the message says how to make one).
            StaleGuidanceError: the entry was made with other settings.
            GuidanceCacheError: the entry's files are unreadable or inconsistent.
        """
        entry = self.read_key(pair_key(rgb, thermal))
        if tuple(entry.mask.shape[1:]) != (int(rgb.shape[0]), int(rgb.shape[1])):
            raise GuidanceCacheError(f"guidance entry {entry.key}: mask size {tuple(entry.mask.shape[1:])} "
                                     f"differs from the image size {tuple(rgb.shape[:2])}")
        return entry

    def read_key(self, key: str) -> GuidanceEntry:
        """The entry stored under ``key`` (see :meth:`read`)."""
        tensor_path, json_path = self._paths(key)
        if not json_path.is_file():
            raise GuidanceNotCachedError(f"{self.root}: no guidance for image pair {key[:16]}… "
                                         f"(run `ivf-train tesg-guidance` over these images)")
        try:
            record = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise GuidanceCacheError(f"{json_path}: unreadable guidance entry ({exc})") from exc
        if record.get("settings_hash") != self.settings_hash:
            raise StaleGuidanceError(f"{json_path}: made with other generator settings "
                                     f"({str(record.get('settings_hash'))[:16]}… instead of "
                                     f"{self.settings_hash[:16]}…); regenerate it")
        try:
            tensors = read_safetensors(tensor_path, what="guidance entry")
        except TensorFileError as exc:
            raise GuidanceCacheError(str(exc)) from exc
        if "mask" not in tensors or "text_tokens" not in tensors:
            raise GuidanceCacheError(f"{tensor_path}: guidance entry lacks 'mask' or 'text_tokens'")
        return GuidanceEntry(
            key=key, mask=tensors.pop("mask").float(), text_tokens=tensors.pop("text_tokens").float(),
            caption=str(record.get("caption", "")), edited_caption=str(record.get("edited_caption", "")),
            removed_keywords=tuple(record.get("removed_keywords", ())),
            no_keyword=bool(record.get("no_keyword", False)),
            masks={name: t.float() for name, t in tensors.items()}, settings_hash=self.settings_hash)


def _settings_diff(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Which settings differ, for the stale-cache message."""
    names = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {wanted.get(k)!r}" for k in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")
