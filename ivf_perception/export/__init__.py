"""Deployment export: ONNX files of registered models, with their metadata and an on-disk cache.

:mod:`.onnx` writes and checks one file (:func:`export_onnx`) and reads its metadata back
(:func:`read_onnx_metadata`); :mod:`.cache` keeps the file an ONNX Runtime or TensorRT backend
needs for ordinary engine weights (:func:`cached_onnx`), exported once and reused. Both sit
below the engine and above the models: they import the model library and the weights reader,
never the engine or the front doors.
"""

from __future__ import annotations

from ivf_perception.export.cache import cached_onnx, default_cache_dir
from ivf_perception.export.onnx import OnnxCheck, OnnxExportError, export_onnx, onnx_metadata, read_onnx_metadata

__all__ = [
    "OnnxCheck",
    "OnnxExportError",
    "export_onnx",
    "onnx_metadata",
    "read_onnx_metadata",
    "cached_onnx",
    "default_cache_dir",
]
