"""The ONNX file an ONNX Runtime or TensorRT backend runs for ordinary engine weights, exported
once and reused.

Why a cache: exporting takes seconds to a minute (tracing, graph optimisation, the onnxruntime
check), far too long for every node start, and the result depends only on the model, the
weights, the input size and the exporter. The file name carries a key made of exactly those:

* the SHA-256 of the weights file, or, for a randomly initialised model (no weights file), a
  SHA-256 of its state dict: two random models never share a file, and the same random model
  (same seed) does;
* variant, preset, class count, the size (``HxW`` or ``dynamic``);
* the torch, onnx and onnxscript versions and our :data:`~ivf_perception.export.onnx.ONNX_FORMAT`
  (a new exporter may write a different graph).

The key is also stored in the file's metadata (``cache_key``) and checked on reuse. A cached
file that does not load, lacks our metadata or carries another key is exported again with a
warning; files are written to a temporary name and renamed (by :func:`export_onnx`), so two
processes filling the cache at once never see half a file.

The cache lives under ``$IVF_PERCEPTION_CACHE`` (default ``~/.cache/ivf_perception``), in
``onnx/``; deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ivf_perception.export.onnx import (
    ONNX_FORMAT,
    OnnxExportError,
    export_onnx,
    onnx_metadata,
    read_onnx_metadata,
)

__all__ = ["CACHE_ENV", "default_cache_dir", "cached_onnx", "onnx_cache_key"]

CACHE_ENV = "IVF_PERCEPTION_CACHE"
"""Environment variable naming the cache folder (ONNX files, TensorRT engines)."""

_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$IVF_PERCEPTION_CACHE`` if set, else ``~/.cache/ivf_perception``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ivf_perception"


def _state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every tensor of the state dict."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim buffers too
    return digest.hexdigest()


def _exporter_versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
            "format": ONNX_FORMAT}


def onnx_cache_key(variant: str, model: nn.Module, weights_sha256: str, size: str) -> str:
    """The hex key of one cached export (see the module docstring for what it covers)."""
    ident = {
        "weights": weights_sha256,
        "variant": variant,
        "preset": getattr(model, "preset", ""),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "size": size,
        **_exporter_versions(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def cached_onnx(model: nn.Module, weights_path: str | Path | None, *, height: int | None, width: int | None,
                dynamic: bool = False, cache_dir: str | Path | None = None,
                metadata: Mapping[str, object] | None = None) -> Path:
    """The cached ONNX export of ``model`` (loaded from ``weights_path``), exporting it if needed.

    Args:
        model: the model on the CPU, weights loaded.
        weights_path: the engine weights it was loaded from, or None for a random model (the
            key then hashes the state dict, and the metadata's ``weights_sha256`` is empty).
        height, width: the fixed input size (ignored with ``dynamic`` except as tracing size).
        dynamic: a file for any size divisible by the model's input multiple.
        cache_dir: default :func:`default_cache_dir`.
        metadata: extra metadata over :func:`onnx_metadata`'s (e.g. another class table).

    Returns:
        The path of a checked ``.onnx`` file.

    Raises:
        OnnxExportError: as :func:`export_onnx` (and when the weights file cannot be read).
    """
    if not dynamic and (height is None or width is None):
        raise OnnxExportError("a fixed-size cached ONNX export needs height and width (or dynamic=True)")
    size = "dynamic" if dynamic else f"{height}x{width}"
    if weights_path is not None and not Path(weights_path).is_file():
        raise OnnxExportError(f"{weights_path}: weights file not found (needed to key the ONNX cache)")
    meta = {**onnx_metadata(model, None if weights_path is None else Path(weights_path)), **(metadata or {})}
    source = str(meta["weights_sha256"]) if weights_path is not None else "state_dict:" + _state_dict_sha256(model)
    variant = str(meta["variant"])
    key = onnx_cache_key(variant, model, source, size)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "onnx" / f"{variant}-{getattr(model, 'preset', '') or 'custom'}-{size}-{key[:16]}.onnx"
    if path.exists():
        try:
            found = read_onnx_metadata(path).get("cache_key")
        except OnnxExportError as exc:
            _log.warning("cached ONNX file is unusable, exporting it again: %s", exc)
        else:
            if found == key:
                return path
            _log.warning("cached ONNX file %s carries another key (%s), exporting it again", path, found)
    meta["cache_key"] = key
    _log.info("exporting %s to ONNX (%s) once, cached at %s", variant, size, path)
    export_onnx(model, path, height=height, width=width, dynamic=dynamic, metadata=meta)
    return path
