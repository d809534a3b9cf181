"""Model registry: variants are declared as data and built by name.

timm's habit: each registered function is stored under its ``__name__``; re-registering a
name warns; unknown names fail with the list of known ones. ``build_model`` drops
``None``-valued overrides so CLI options that were not given never replace a variant's
defaults, and it never mutates the registered defaults (smp forks that update the shared
dict in place make one call change the next).
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from typing import Any, Callable

from torch import nn

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "register_model",
    "list_models",
    "build_model",
    "is_model",
    "model_entrypoint",
    "UnknownModelError",
    "PRESETS",
    "PRETRAINED_FILE_ARGS",
    "without_pretrained_files",
]

PRESETS = ("paper", "small", "tiny")
"""Size presets every family understands: ``paper`` is the published configuration,
``small`` a CPU/embedded configuration, ``tiny`` the fastest usable one."""

PRETRAINED_FILE_ARGS = frozenset({"encoder_weights", "trunk_weights", "thermal_trunk_weights"})
"""Builder arguments naming ImageNet files that initialise a model before training (CMFS's
VMamba-T, MAFS's ResNet trunks). Trained weights already contain those tensors, so rebuilding a
trained model must not need the files: exports and the engine drop these arguments."""

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_DEPRECATED: dict[str, str] = {}


class UnknownModelError(IvfPerceptionError, KeyError):
    """The requested model name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def without_pretrained_files(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without :data:`PRETRAINED_FILE_ARGS` (for rebuilding a trained model)."""
    return {k: v for k, v in args.items() if k not in PRETRAINED_FILE_ARGS}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator registering a model-building function under its ``__name__``."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        warnings.warn(f"Overwriting {name} in the model registry", stacklevel=2)
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def register_deprecated(old_name: str, new_name: str) -> None:
    """Keep a retired name working, with a DeprecationWarning naming the replacement."""
    _DEPRECATED[old_name] = new_name


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    _ensure_families_imported()
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` (or a deprecated alias of it) is registered."""
    _ensure_families_imported()
    return name in _MODEL_ENTRYPOINTS or name in _DEPRECATED


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered building function for ``name``; raises UnknownModelError otherwise."""
    _ensure_families_imported()
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(f"Model name '{name}' is deprecated; use '{new}'", DeprecationWarning, stacklevel=3)
        name = new
    if name not in _MODEL_ENTRYPOINTS:
        known = ", ".join(sorted(_MODEL_ENTRYPOINTS))
        raise UnknownModelError(f"Unknown model ({name}); registered models: {known}")
    return _MODEL_ENTRYPOINTS[name]


def build_model(name: str, *, preset: str | None = None, num_classes: int | None = None,
                **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered family name (e.g. ``"s4fusion"``) or full variant name.
        preset: size preset (``paper``, ``small``, ``tiny``); ``None`` keeps the variant's own.
        num_classes: segmentation classes; ``None`` keeps the variant's default.
        **overrides: constructor arguments; ``None`` values are dropped.

    Returns:
        The model in train mode on the CPU (or on ``device=`` if passed).
    """
    kwargs = {k: copy.deepcopy(v) for k, v in overrides.items() if v is not None}
    if preset is not None:
        kwargs["preset"] = preset  # each family validates its own presets
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return model_entrypoint(name)(**kwargs)


def _ensure_families_imported() -> None:
    """Import the family modules so their ``@register_model`` decorators have run."""
    from ivf_perception.models import families  # noqa: F401  (import registers)
