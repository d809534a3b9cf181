"""The eager PyTorch backend: the model's own forward, under autocast for bf16/fp16.

The reference every other backend is compared with (``ivf-perception bench`` reports accuracy
against it in fp32), and the one training and evaluation use.
"""

from __future__ import annotations

import torch

from ivf_perception.engine.backends.base import PRECISIONS, BackendContext, BackendOutput, InferenceBackend

__all__ = ["TorchBackend"]


class TorchBackend(InferenceBackend):
    """``model(rgb, thermal)`` in inference mode; fp16/bf16 under ``torch.autocast`` (the
    selective scan still accumulates in fp32)."""

    name = "torch"

    def __init__(self, context: BackendContext) -> None:
        self.model = context.model
        self.device = context.device
        self.precision = context.precision

    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        with torch.inference_mode():
            if self.precision == "fp32":
                out = self.model(rgb, thermal)
                return BackendOutput(out.fused, out.logits)
            with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
                out = self.model(rgb, thermal)
            return BackendOutput(out.fused.float(), None if out.logits is None else out.logits.float())
