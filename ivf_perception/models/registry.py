"""Model registry: variants are declared as data and built by name.

timm's habit: each registered function is stored under its ``__name__``; re-registering a
name warns; unknown names fail with the list of known ones. The registry is a leaf: it imports
no family. The package ``ivf_perception.models`` imports every family module, whose
``@register_model`` decorators fill it, so importing anything from the model library sees every
variant (and the registry never imports back into the families that import it).

``build_model`` drops ``None``-valued overrides so CLI options that were not given never replace
a variant's defaults, and it never mutates the registered defaults (smp forks that update the
shared dict in place make one call change the next).
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from torch import nn

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "register_model",
    "list_models",
    "build_model",
    "is_model",
    "model_entrypoint",
    "UnknownModelError",
    "list_presets",
    "describe_presets",
    "TEST_PRESET",
    "PRETRAINED_FILE_ARGS",
    "without_pretrained_files",
    "register_sidecar_legacy_args",
    "sidecar_legacy_args",
]

PRETRAINED_FILE_ARGS = frozenset({"encoder_weights", "trunk_weights", "thermal_trunk_weights",
                                  "semantic_weights", "clip_weights", "text_embedding"})
"""Builder arguments naming pretrained files that initialise a model before training (CMFS's
VMamba-T, MAFS's ResNet trunks, UP-Fusion's ConvNeXt and CLIP prompt embedding). Trained
weights already contain those tensors, so rebuilding a trained model must not need the files:
exports and the engine drop these arguments."""

TEST_PRESET = "test"
"""The micro preset of every family (timm's ``test_*`` habit): for CPU tests, not for use."""

_Builder = TypeVar("_Builder", bound=Callable[..., Any])

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_PRESETS: dict[str, tuple[str, ...]] = {}
_DEPRECATED: dict[str, str] = {}
_SIDECAR_LEGACY_ARGS: dict[str, dict[str, Any]] = {}


class UnknownModelError(IvfPerceptionError, KeyError):
    """The requested model name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def without_pretrained_files(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without :data:`PRETRAINED_FILE_ARGS` (for rebuilding a trained model)."""
    return {k: v for k, v in args.items() if k not in PRETRAINED_FILE_ARGS}


@overload
def register_model(fn: _Builder, *, presets: Iterable[str] = ()) -> _Builder: ...


@overload
def register_model(fn: None = None, *, presets: Iterable[str] = ()) -> Callable[[_Builder], _Builder]: ...


def register_model(fn: _Builder | None = None, *,
                   presets: Iterable[str] = ()) -> _Builder | Callable[[_Builder], _Builder]:
    """Decorator registering a model-building function under its ``__name__``.

    Use it bare (``@register_model``) or with the size presets the builder accepts
    (``@register_model(presets=PRESET_ARGS)``): :func:`list_presets` reports exactly those, so
    the bench, the CLI help and the README never offer a preset a family lacks.
    """
    declared = tuple(presets)

    def register(builder: _Builder) -> _Builder:
        name = builder.__name__
        if name in _MODEL_ENTRYPOINTS:
            warnings.warn(f"Overwriting {name} in the model registry", stacklevel=3)
        _MODEL_ENTRYPOINTS[name] = builder
        _MODEL_PRESETS[name] = declared
        return builder

    return register if fn is None else register(fn)


def register_sidecar_legacy_args(name: str, args: dict[str, Any]) -> None:
    """Declare what weights of ``name`` were built with before the constructor arguments
    ``args`` existed.

    Why: a family that adds an architecture switch and changes a preset's value of it must
    still rebuild older weight files exactly. The weight loader puts these values under a
    sidecar's own ``model_args`` (:func:`sidecar_legacy_args`), and exports record the keys
    explicitly, so only files written before the switch get the legacy values.
    """
    _SIDECAR_LEGACY_ARGS[name] = dict(args)


def sidecar_legacy_args(name: str) -> dict[str, Any]:
    """The legacy constructor arguments of ``name`` (empty when the family declares none)."""
    return copy.deepcopy(_SIDECAR_LEGACY_ARGS.get(_DEPRECATED.get(name, name), {}))


def register_deprecated(old_name: str, new_name: str) -> None:
    """Keep a retired name working, with a DeprecationWarning naming the replacement."""
    _DEPRECATED[old_name] = new_name


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` (or a deprecated alias of it) is registered."""
    return name in _MODEL_ENTRYPOINTS or name in _DEPRECATED


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered building function for ``name``; raises UnknownModelError otherwise."""
    return _MODEL_ENTRYPOINTS[_resolve(name)]


def list_presets(name: str, *, include_test: bool = True) -> tuple[str, ...]:
    """The size presets model ``name`` accepts, in the order its family declares them.

    Args:
        name: a registered (or deprecated) model name.
        include_test: keep :data:`TEST_PRESET`, the micro configuration for CPU tests, which
            benchmarks and help texts leave out (as they leave out ``test_*`` names).

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    presets = _MODEL_PRESETS[_resolve(name)]
    return presets if include_test else tuple(p for p in presets if p != TEST_PRESET)


def describe_presets() -> str:
    """Every family's presets on one line (``cmfs: paper, small; ...``) for help texts, so they
    name exactly the presets each family has."""
    return "; ".join(f"{name}: {', '.join(list_presets(name, include_test=False))}"
                     for name in list_models() if not name.startswith("test_"))


def _resolve(name: str) -> str:
    """``name`` itself, or the replacement of a deprecated name (with a DeprecationWarning)."""
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(f"Model name '{name}' is deprecated; use '{new}'", DeprecationWarning, stacklevel=4)
        name = new
    if name not in _MODEL_ENTRYPOINTS:
        known = ", ".join(sorted(_MODEL_ENTRYPOINTS))
        raise UnknownModelError(f"Unknown model ({name}); registered models: {known}")
    return name


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

