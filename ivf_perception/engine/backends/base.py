"""The backend seam: what runs the network between the Engine's pre- and post-processing.

Why a seam: robots deploy through ONNX Runtime or TensorRT with a cached engine, workstations
through eager PyTorch or ``torch.compile``. The Engine keeps owning device, precision, input
validation, padding and label/colour post-processing for all of them, so every backend sees the
same padded float batch and returns the same two tensors; nothing else differs between them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.guidance import Guidance
from ivf_perception.models import FusionSegModel

__all__ = ["BackendError", "BackendOutput", "BackendContext", "InferenceBackend", "PRECISIONS"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Precision name → the dtype a backend computes in (autocast, or the built engine's type)."""


class BackendError(IvfPerceptionError, RuntimeError):
    """A backend cannot be created or run (unknown name, missing package, bad file); says which."""


class BackendOutput(NamedTuple):
    """A backend's result for one padded batch, float32 on the Engine's device.

    Attributes:
        fused: (B, 3, H, W) fused images in [0, 1].
        logits: (B, K, H, W) class scores, or None for fusion-only models.
    """

    fused: torch.Tensor
    logits: torch.Tensor | None


@dataclass
class BackendContext:
    """Everything a backend may need to build itself, decided by the Engine.

    Attributes:
        model: the network, on ``device``, in eval mode (every backend derives from it:
            the eager call, a compiled graph, or an exported file), or None when the weights
            are an ONNX file that holds the whole network (only the ONNX-running backends
            accept that; the others call :meth:`require_model`).
        device: where inputs arrive and outputs are expected.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        weights_path: the engine weights file the model came from (None: random initialisation
            or a model passed in), so exported files can be cached under its hash.
        options: backend-specific settings (cache folder, rebuild flags), passed through as given.
    """

    model: FusionSegModel | None
    device: torch.device
    precision: str
    weights_path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def require_model(self, backend: str) -> FusionSegModel:
        """The PyTorch model, or a :class:`BackendError` saying which backends run ONNX weights."""
        if self.model is None:
            raise BackendError(f"backend '{backend}' runs a PyTorch model, but the weights {self.weights_path} are "
                               "an ONNX file; use backend onnxruntime or tensorrt, or the .safetensors weights")
        return self.model


class InferenceBackend(ABC):
    """Maps the Engine's padded float batch to :class:`BackendOutput`.

    Inputs are ``rgb`` (B, 3, H, W) and ``thermal`` (B, 1, H, W) float32 in [0, 1] on the
    Engine's device, H and W multiples of the model's ``input_multiple`` (or exactly
    :attr:`fixed_size` when the backend has one). Outputs are float32 whatever the precision.
    """

    name: ClassVar[str]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(H, W) every batch must have (a fixed-shape graph), or None for any valid size."""
        return None

    @abstractmethod
    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        """Fuse and segment one padded batch."""

    @property
    def accepts_guidance(self) -> bool:
        """Whether :meth:`run_guided` can pass per-frame guidance (TeSG's mask and text tokens)
        to the network; backends that run an exported file run the network's fallback."""
        return False

    def run_guided(self, rgb: torch.Tensor, thermal: torch.Tensor, guidance: Guidance) -> BackendOutput:
        """Like :meth:`run`, with guidance padded like the images (only where :attr:`accepts_guidance`)."""
        raise BackendError(f"backend '{self.name}' runs no per-frame guidance; use backend torch "
                           "(or guidance_mode fallback)")

    def describe(self) -> dict[str, Any]:
        """What logs and diagnostics should say about this backend."""
        return {"backend": self.name, "fixed_size": self.fixed_size}

    def release(self) -> None:  # noqa: B027  (optional hook; most backends hold nothing extra)
        """Free what the backend holds beyond the model (sessions, engines, graphs)."""
