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
from collections.abc import Callable, Iterable, Mapping
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
    "with_legacy_args",
    "pinned_args",
]

PRETRAINED_FILE_ARGS = frozenset({"encoder_weights", "trunk_weights", "thermal_trunk_weights",
                                  "semantic_weights", "clip_weights", "text_embedding", "fallback_text"})
"""Builder arguments naming pretrained files that initialise a model before training (CMFS's
VMamba-T, MAFS's ResNet trunks, UP-Fusion's ConvNeXt and CLIP prompt embedding, TeSG's fallback
text tokens). Trained
weights already contain those tensors, so rebuilding a trained model must not need the files:
exports and the engine drop these arguments."""

TEST_PRESET = "test"
"""The micro preset of every family (timm's ``test_*`` habit): for CPU tests, not for use."""

_Builder = TypeVar("_Builder", bound=Callable[..., Any])

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_PRESETS: dict[str, tuple[str, ...]] = {}
_DEPRECATED: dict[str, str] = {}
_LEGACY_ARGS: dict[str, Mapping[str, Mapping[str, Any]]] = {}


class UnknownModelError(IvfPerceptionError, KeyError):
    """The requested model name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def without_pretrained_files(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without :data:`PRETRAINED_FILE_ARGS` (for rebuilding a trained model)."""
    return {k: v for k, v in args.items() if k not in PRETRAINED_FILE_ARGS}


def with_legacy_args(name: str, preset: str | None, args: Mapping[str, Any]) -> dict[str, Any]:
    """Saved constructor arguments (a sidecar's ``model_args``, a run's ``model.overrides``)
    completed with the values that weights saved before a switch existed were built with.

    Why: saved arguments hold only what differed from the preset, so when a preset's default
    changes (e.g. CMFS ``paper`` switching to the public code's bidirectional MoE Mamba), old
    weights would otherwise be rebuilt with the new default: a load error at best, a silently
    different network at worst. New saves pin the switches (:func:`pinned_args`), so a switch
    missing from saved arguments means the weights predate it.

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    legacy = _LEGACY_ARGS.get(_resolve(name), {}).get(preset or "", {})
    return {**copy.deepcopy(dict(legacy)), **args}


def pinned_args(name: str, model: nn.Module) -> dict[str, Any]:
    """The values ``model`` was built with of every switch its family declares legacy values
    for (see :func:`with_legacy_args`), to write into saved arguments.

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    keys = {k for per_preset in _LEGACY_ARGS.get(_resolve(name), {}).values() for k in per_preset}
    if not keys:
        return {}
    built = model.config()["model_args"]  # type: ignore[operator]
    return {k: copy.deepcopy(built[k]) for k in sorted(keys) if k in built}


@overload
def register_model(fn: _Builder, *, presets: Iterable[str] = (),
                   legacy_args: Mapping[str, Mapping[str, Any]] | None = None) -> _Builder: ...


@overload
def register_model(fn: None = None, *, presets: Iterable[str] = (),
                   legacy_args: Mapping[str, Mapping[str, Any]] | None = None) -> Callable[[_Builder], _Builder]: ...


def register_model(fn: _Builder | None = None, *, presets: Iterable[str] = (),
                   legacy_args: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> _Builder | Callable[[_Builder], _Builder]:
    """Decorator registering a model-building function under its ``__name__``.

    Use it bare (``@register_model``) or with the size presets the builder accepts
    (``@register_model(presets=PRESET_ARGS)``): :func:`list_presets` reports exactly those, so
    the bench, the CLI help and the README never offer a preset a family lacks.
    ``legacy_args`` maps a preset to the constructor arguments that weights saved before those
    switches existed were built with (:func:`with_legacy_args`).
    """
    declared = tuple(presets)

    def register(builder: _Builder) -> _Builder:
        name = builder.__name__
        if name in _MODEL_ENTRYPOINTS:
            warnings.warn(f"Overwriting {name} in the model registry", stacklevel=3)
        _MODEL_ENTRYPOINTS[name] = builder
        _MODEL_PRESETS[name] = declared
        if legacy_args:
            _LEGACY_ARGS[name] = legacy_args
        return builder

    return register if fn is None else register(fn)


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

