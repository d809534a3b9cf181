"""Resolve layer choices given as a name or a callable (timm's ``get_norm_layer`` habit), and the typed
``device``/``dtype`` keywords every constructor passes down to its layers.

Constructors accept ``norm_layer="layernorm"`` as well as a class or ``functools.partial``, so
presets stay plain data and callers can still pass their own layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch
from torch import nn

__all__ = ["DeviceLike", "FactoryKwargs", "NormFactory", "factory_kwargs", "get_norm_layer"]

NormFactory = Callable[..., nn.Module]

DeviceLike = torch.device | str | None
"""What every constructor's ``device=`` accepts: a device, its name, or ``None`` for the default."""


class FactoryKwargs(TypedDict):
    """The ``device``/``dtype`` pair splatted into every layer a model builds (timm's ``dd``).

    A plain ``{"device": ..., "dtype": ...}`` dict is typed ``dict[str, object]``, which no layer
    signature accepts; this TypedDict keeps each key's own type through ``**``.
    """

    device: DeviceLike
    dtype: torch.dtype | None


def factory_kwargs(device: DeviceLike = None, dtype: torch.dtype | None = None) -> FactoryKwargs:
    """The keywords to pass as ``**dd`` when a constructor creates its layers on ``device`` in ``dtype``."""
    return {"device": device, "dtype": dtype}


_NORM_LAYERS: dict[str, NormFactory] = {
    "layernorm": nn.LayerNorm,
    "rmsnorm": nn.RMSNorm,
    "identity": nn.Identity,
}


def get_norm_layer(norm_layer: str | NormFactory | None) -> NormFactory:
    """A norm-layer constructor called as ``norm_layer(num_features, device=..., dtype=...)``.

    Names are case-insensitive and ignore underscores (``"layer_norm"`` == ``"LayerNorm"``);
    they normalise the last dimension, as channels-last token maps need. ``None`` means no
    normalisation (``nn.Identity``). A callable is returned unchanged.

    Raises:
        ValueError: for an unknown name, listing the supported ones.
        TypeError: for anything that is neither a name nor a callable.
    """
    if norm_layer is None:
        return nn.Identity
    if isinstance(norm_layer, str):
        key = norm_layer.lower().replace("_", "")
        if key not in _NORM_LAYERS:
            raise ValueError(f"Unknown norm layer {norm_layer!r}; supported norm layers: {sorted(_NORM_LAYERS)}")
        return _NORM_LAYERS[key]
    if callable(norm_layer):
        return norm_layer
    raise TypeError(f"norm_layer must be a name, a callable or None, got {type(norm_layer).__name__}")
