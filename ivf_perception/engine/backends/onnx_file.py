"""The ONNX file behind an ONNX-running backend (onnxruntime, TensorRT), and ONNX weights files.

Two sources, one rule: an ``.onnx`` file given as the Engine's weights is run as it is (the
Engine builds no PyTorch model; :func:`onnx_weights_info` describes it from the metadata that
``ivf-perception export-onnx`` writes); ordinary weights are exported once and cached by
:func:`ivf_perception.export.cache.cached_onnx` (keyed by the weights' hash, the size and the
exporter versions) and that file is run. :func:`onnx_file` decides between the two.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from ivf_perception.engine.backends.base import BackendContext, BackendError
from ivf_perception.engine.weights import WeightsError, WeightsInfo

__all__ = ["is_onnx_file", "onnx_weights_info", "onnx_file"]


def is_onnx_file(path: str | Path) -> bool:
    """Whether engine weights name an ONNX file (by suffix, as ``.safetensors`` weights are)."""
    return Path(path).suffix.lower() == ".onnx"


def onnx_weights_info(path: Path) -> tuple[WeightsInfo, int]:
    """What an exported ONNX file holds, as the sidecar of ``.safetensors`` weights would say it,
    and its input multiple.

    Raises:
        WeightsError: the file is missing, unreadable or not one of our exports (naming it).
    """
    from ivf_perception.export.onnx import OnnxExportError, read_onnx_metadata

    try:
        meta = read_onnx_metadata(path)
    except OnnxExportError as exc:
        raise WeightsError(str(exc)) from exc
    if "guidance_inputs" in meta:
        raise WeightsError(f"{path} is a guided export (inputs mask and text_tokens, `export-onnx --guidance`) for "
                           "other runtimes; the engine runs a guided model's fallback export (export without "
                           "--guidance) or its .safetensors weights with backend torch for guidance")
    info = WeightsInfo(variant=str(meta["variant"]), preset=str(meta["preset"]), num_classes=int(meta["num_classes"]),
                       classes=list(meta.get("classes") or []), palette=[int(c) for c in meta.get("palette") or []],
                       input_size=_input_size(meta.get("input_size")))
    return info, int(meta["input_multiple"])


def _input_size(value: Any) -> list[int] | None:
    """``HxW`` → [H, W]; ``dynamic`` (or anything else) → None."""
    h, _, w = str(value).partition("x")
    return [int(h), int(w)] if h.isdigit() and w.isdigit() else None


def onnx_file(context: BackendContext, height: int | None, width: int | None, *, dynamic: bool = False) -> Path:
    """The ONNX file to run: the weights themselves when they are one, else the cached export of
    the context's model at ``height``×``width`` (or for any size with ``dynamic``).

    ``options["cache_dir"]`` picks the cache folder; ``options["force_rebuild"]`` exports again
    even when a valid cached file exists.

    Raises:
        BackendError: the model cannot be exported (naming why), or the onnx packages are missing.
    """
    if context.weights_path is not None and is_onnx_file(context.weights_path):
        return context.weights_path
    model = context.require_model("onnx export")
    from ivf_perception.export.cache import cached_onnx
    from ivf_perception.export.onnx import OnnxExportError

    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the exporter traces on the CPU; the Engine keeps its own copy
    cache_dir = context.options.get("cache_dir")
    started = time.time()
    try:
        path = cached_onnx(model, context.weights_path, height=height, width=width, dynamic=dynamic,
                           cache_dir=cache_dir)
        if context.options.get("force_rebuild") and path.stat().st_mtime < started:
            path.unlink()  # a reused file: export it again as asked
            path = cached_onnx(model, context.weights_path, height=height, width=width, dynamic=dynamic,
                               cache_dir=cache_dir)
    except OnnxExportError as exc:
        raise BackendError(f"cannot export {getattr(model, 'variant', type(model).__name__)} to ONNX: {exc}") from exc
    return path
