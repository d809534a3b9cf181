"""Inference backends behind the Engine (see :mod:`.base` for the contract).

Backends are imported by name on first use, so an optional runtime (onnxruntime, TensorRT) is
only needed by the processes that ask for it.
"""

from __future__ import annotations

import importlib

from ivf_perception.engine.backends.base import BackendContext, BackendError, BackendOutput, InferenceBackend

__all__ = ["BACKEND_MODULES", "BackendContext", "BackendError", "BackendOutput", "InferenceBackend",
           "create_backend"]

BACKEND_MODULES: dict[str, tuple[str, str]] = {
    "torch": ("ivf_perception.engine.backends.torch_eager", "TorchBackend"),
    "compile": ("ivf_perception.engine.backends.compile_backend", "CompileBackend"),
    "onnxruntime": ("ivf_perception.engine.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("ivf_perception.engine.backends.tensorrt_backend", "TensorRTBackend"),
}
"""Backend name → (module, class), imported lazily by :func:`create_backend`."""


def create_backend(name: str, context: BackendContext) -> InferenceBackend:
    """Build the backend called ``name`` for ``context``.

    Raises:
        BackendError: an unknown name (the message lists the known ones), or what the backend
            itself raises when its runtime is missing or its files are unusable.
    """
    if name not in BACKEND_MODULES:
        raise BackendError(f"unknown inference backend '{name}'; use one of {', '.join(BACKEND_MODULES)}")
    module_name, class_name = BACKEND_MODULES[name]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(context)
