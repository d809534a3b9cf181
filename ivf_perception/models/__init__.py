"""Model library: registry, shared layers/ops and the fusion+segmentation families.

Like timm's ``models/__init__.py``, the package imports every family module so that their
``@register_model`` decorators run; the registry itself imports no family.
"""

# Every family, imported for its registrations (this package is their one importer).
from ivf_perception.models import cmfs, mafs, s4fusion, tesg, upfusion  # noqa: F401
from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.registry import (
    UnknownModelError,
    build_model,
    describe_presets,
    is_model,
    list_models,
    list_presets,
    register_model,
)

__all__ = [
    "FusionSegModel",
    "FusionSegOutput",
    "UnknownModelError",
    "build_model",
    "describe_presets",
    "is_model",
    "list_models",
    "list_presets",
    "register_model",
]
