"""Exponential moving average (EMA) of a model's weights, on timm's ``ModelEmaV3``.

Why: the weights after the last optimiser step carry the noise of the last few batches; their
running average over roughly ``1 / (1 − decay)`` steps usually validates better and is what a
run with ``ema_decay`` set validates, keeps as ``ckpt/best`` and exports. The raw weights go on
training (and are what ``ckpt/last`` resumes).

timm's :class:`~timm.utils.ModelEmaV3` does the averaging (``E ← d·E + (1 − d)·W`` over the
floating-point state, parameters and buffers such as BatchNorm statistics, with one foreach
lerp; integer buffers such as ``num_batches_tracked`` are copied). Where ours differs on purpose:

* the warm-up of the decay: after ``n`` updates ``d = min(decay, (1 + n) / (10 + n))`` (the
  rule our runs have always used, and the one their checkpoints' update counts assume), instead
  of timm's ``1 − (1 + n/γ)^−p``; it keeps the randomly initialised start from dominating the
  average of a short run (with decay 0.9999 it would otherwise weigh e^−1 after 10 000 steps);
* the copy takes no gradients, and the update count is ours to keep, so a checkpoint stores
  ``{"decay", "updates", "weights"}`` (:meth:`ModelEMA.checkpoint_state`), readable with
  ``weights_only=True``, rather than a module state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA(ModelEmaV3):
    """An averaged copy of ``model`` (same device and dtype), in eval mode and without gradients.

    Args:
        model: the trained model; copied once at construction.
        decay: the decay ``d`` once warmed up, in (0, 1).

    Raises:
        ValueError: ``decay`` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.999, got {decay}")
        super().__init__(model, decay=float(decay))
        self.module.requires_grad_(False)
        self.updates = 0

    def get_decay(self, step: int | None = None) -> float:
        """The decay applied after ``step`` updates (default: the next :meth:`update`'s)."""
        n = self.updates if step is None else step
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies (warm-up, see the module docstring)."""
        return self.get_decay()

    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        super().update(model, self.updates if step is None else step)
        self.updates += 1

    def checkpoint_state(self) -> dict[str, Any]:
        """Decay, update count and the averaged tensors (``weights_only``-loadable)."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_state` (strict: the tensors must fit the model)."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["weights"])
