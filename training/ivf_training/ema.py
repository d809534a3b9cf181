"""Exponential moving average (EMA) of a model's weights.

Why: the weights after the last optimiser step carry the noise of the last few batches; their
running average over roughly ``1 / (1 − decay)`` steps usually validates better and is what a
run with ``ema_decay`` set validates, keeps as ``ckpt/best`` and exports. The raw weights go on
training (and are what ``ckpt/last`` resumes).

After ``n`` updates the averaged weights are ``E ← d·E + (1 − d)·W`` with
``d = min(decay, (1 + n) / (10 + n))``: the warm-up keeps the randomly initialised starting
point from dominating the average of a short run (with decay 0.9999 the first weights would
otherwise weigh e^−1 after 10 000 steps).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """An averaged copy of ``model`` (same device and dtype), in eval mode and without gradients.

    Floating-point tensors of the state dict (parameters and buffers such as BatchNorm running
    statistics) are averaged; integer buffers (``num_batches_tracked``) are copied.

    Args:
        model: the trained model; copied once at construction.
        decay: the decay ``d`` once warmed up, in (0, 1).

    Raises:
        ValueError: ``decay`` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.999, got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies (warm-up, see the module docstring)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        d = self.current_decay()
        averaged, copied = [], []
        source = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            (averaged if ema_value.is_floating_point() else copied).append((ema_value, source[name].detach()))
        if averaged:
            torch._foreach_lerp_([e for e, _ in averaged], [v for _, v in averaged], 1.0 - d)
        for ema_value, value in copied:
            ema_value.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Decay, update count and the averaged tensors (``weights_only``-loadable)."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (strict: the tensors must fit the model)."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["weights"])
