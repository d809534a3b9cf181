"""Resolve layer choices given as a name or a callable (timm's ``get_norm_layer`` habit).

Constructors accept ``norm_layer="layernorm"`` as well as a class or ``functools.partial``, so
presets stay plain data and callers can still pass their own layer.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["NormFactory", "get_norm_layer"]

NormFactory = Callable[..., nn.Module]

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
