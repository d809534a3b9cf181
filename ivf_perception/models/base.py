"""The base class and output contract shared by every fusion+segmentation network.

Contract (DESIGN §3): ``forward(rgb, thermal)`` with ``rgb`` B×3×H×W and ``thermal`` B×1×H×W,
float in [0, 1], returns :class:`FusionSegOutput` with ``fused`` B×3×H×W in [0, 1], ``logits``
B×K×H×W (``None`` for fusion-only models) and ``aux`` (training-only extras). Models never
compute losses and never pick a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ivf_perception.checks import ShapeError, check_shape, checks_enabled

__all__ = ["FusionSegOutput", "FusionSegModel"]


@dataclass
class FusionSegOutput:
    """What every model returns.

    Attributes:
        fused: B×3×H×W fused image in [0, 1].
        logits: B×K×H×W class scores, or ``None`` for fusion-only models.
        aux: extras for training losses (features, auxiliary predictions); empty in eval.
    """

    fused: torch.Tensor
    logits: torch.Tensor | None
    aux: dict[str, Any] = field(default_factory=dict)


class FusionSegModel(nn.Module):
    """Base class: input checks, capability flags and the forward contract.

    Subclasses implement ``forward_features(rgb, thermal)`` and ``forward_head(features, rgb,
    thermal)`` and set ``input_multiple`` (the stride that H and W must be divisible by; the
    engine pads to it).

    Capability flags (smp's habit) tell export and the engine what the model supports.
    """

    input_multiple: int = 1
    requires_divisible_input_shape: bool = True
    _exportable: bool = True
    _dynamic_onnx: bool = True
    """Whether an ONNX export may leave H and W dynamic (``ivf_perception.export``); False
    where the exported graph holds sizes fixed at tracing (a fixed-size file still works)."""
    _compilable: bool = True
    accepts_guidance: bool = False
    """Whether ``forward`` takes per-frame guidance (``guidance=``, an
    :class:`ivf_perception.guidance.Guidance`: TeSG's mask and text tokens). Such a model still
    runs without it (its fallback), so callers that know nothing of guidance keep working."""
    num_classes: int = 0
    variant: str = ""
    preset: str = ""

    def check_input(self, rgb: torch.Tensor, thermal: torch.Tensor) -> None:
        """Validate the input pair; skipped while tracing/scripting/compiling."""
        if not checks_enabled():
            return
        check_shape(rgb, "B 3 H W", name="rgb")
        check_shape(thermal, "B 1 H W", name="thermal", B=rgb.shape[0], H=rgb.shape[2], W=rgb.shape[3])
        if self.requires_divisible_input_shape:
            m = self.input_multiple
            h, w = rgb.shape[-2:]
            if h % m or w % m:
                nh, nw = -(-h // m) * m, -(-w // m) * m
                raise ShapeError(
                    f"{type(self).__name__} expects height and width divisible by {m}, got {h}x{w}; "
                    f"pad the images to {nh}x{nw} (the Engine does this automatically)."
                )

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_features")

    def forward_head(self, features: Any, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement forward_head")

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        self.check_input(rgb, thermal)
        return self.forward_head(self.forward_features(rgb, thermal), rgb, thermal)

    def config(self) -> dict[str, Any]:
        """Constructor arguments needed to rebuild this model (stored in weight sidecars)."""
        return {"variant": self.variant, "preset": self.preset, "num_classes": self.num_classes}
