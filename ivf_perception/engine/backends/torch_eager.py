"""The eager PyTorch backend: the model's own forward, under autocast for bf16/fp16.

The reference every other backend is compared with (``ivf-perception bench`` reports accuracy
against it in fp32), and the one training and evaluation use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ivf_perception.engine.backends.base import PRECISIONS, BackendContext, BackendOutput, InferenceBackend
from ivf_perception.guidance import Guidance
from ivf_perception.models import FusionSegOutput

__all__ = ["TorchBackend"]


class TorchBackend(InferenceBackend):
    """``model(rgb, thermal)`` in inference mode; fp16/bf16 under ``torch.autocast`` (the
    selective scan still accumulates in fp32).

    Subclasses that run the model another way (``compile``) replace :attr:`forward` and keep
    the inference mode, autocast and float32 outputs of :meth:`run`.
    """

    name = "torch"

    def __init__(self, context: BackendContext) -> None:
        self.model = context.require_model(self.name)
        self.device = context.device
        self.precision = context.precision
        self.forward: Callable[[torch.Tensor, torch.Tensor], FusionSegOutput] = self.model

    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        return self._call(self.forward, rgb, thermal)

    @property
    def accepts_guidance(self) -> bool:
        """The eager model's own flag; a compiled graph is traced without guidance."""
        return bool(getattr(self.model, "accepts_guidance", False)) and self.forward is self.model

    def run_guided(self, rgb: torch.Tensor, thermal: torch.Tensor, guidance: Guidance) -> BackendOutput:
        if not self.accepts_guidance:
            return super().run_guided(rgb, thermal, guidance)
        return self._call(lambda r, t: self.model(r, t, guidance=guidance), rgb, thermal)

    def _call(self, forward: Callable[[torch.Tensor, torch.Tensor], FusionSegOutput], rgb: torch.Tensor,
              thermal: torch.Tensor) -> BackendOutput:
        with torch.inference_mode():
            if self.precision == "fp32":
                out = forward(rgb, thermal)
                return BackendOutput(out.fused, out.logits)
            with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
                out = forward(rgb, thermal)
            return BackendOutput(out.fused.float(), None if out.logits is None else out.logits.float())
