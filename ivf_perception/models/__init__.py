"""Model library: registry, shared layers/ops and the fusion+segmentation families."""

from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.registry import (
    PRESETS,
    UnknownModelError,
    build_model,
    is_model,
    list_models,
    register_model,
)

__all__ = [
    "FusionSegModel",
    "FusionSegOutput",
    "PRESETS",
    "UnknownModelError",
    "build_model",
    "is_model",
    "list_models",
    "register_model",
]
