"""The two-layer feed-forward block of transformer and VMamba blocks, channels-last."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ivf_perception.models.layers.factories import factory_kwargs

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout over the last dimension.

    Args:
        in_features: input channels.
        hidden_features: hidden channels (default: ``in_features``).
        out_features: output channels (default: ``in_features``).
        act_layer: activation constructor.
        drop: dropout probability after each linear layer.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (*, in_features)  ->  (*, out_features)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
