"""Plain data ↔ typed configuration dataclasses: type checks, lossless conversion, clear errors.

Generic over the section dataclasses: nothing here knows a training setting. A section's
annotation says what a key accepts (``int``, ``float | None``, ``Literal[...]``, lists, tuples,
free mappings, a nested section). A union of section classes that each declare a ``kind``
literal (the loss settings, one class per ``loss.kind``) is a *tagged* section: the ``kind``
key picks the class, and a key of another kind is reported as such rather than as a typo.

YAML quirk handled here: PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*; float
fields therefore accept strings that Python's ``float()`` parses.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "ConfigError",
    "config_to_dict",
    "build_section",
    "tagged_classes",
    "tagged_kind",
    "section_hints",
    "unknown_key_message",
]


class ConfigError(IvfPerceptionError, ValueError):
    """The configuration file or an override is invalid (unknown key, wrong type or value)."""


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML-safe data (dicts, lists, scalars) of a config dataclass (tuples → lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    return cfg


def _field_hints(cls: type) -> dict[str, Any]:
    """Annotations of the dataclass fields of ``cls`` (class variables left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def tagged_classes(tp: Any) -> dict[str, type] | None:
    """``{kind: class}`` when ``tp`` is a union of dataclasses that each fix a ``kind`` literal
    (the first member is the default kind), else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    out: dict[str, type] = {}
    for cls in members:
        if not dataclasses.is_dataclass(cls):
            return None
        kind = _field_hints(cls).get("kind")
        if typing.get_origin(kind) is not Literal or len(typing.get_args(kind)) != 1:
            return None
        out[typing.get_args(kind)[0]] = cls
    return out


def tagged_kind(data: Mapping[str, Any], kinds: Mapping[str, type]) -> Any:
    """The kind a tagged section's data names: ``data["kind"]``, or the first (default) kind."""
    return data.get("kind", next(iter(kinds)))


def section_hints(tp: Any) -> dict[str, Any] | None:
    """The keys a section accepts with their annotations (a tagged section: the keys of all its
    kinds, the kind being known only once every override is applied); None for a value."""
    if dataclasses.is_dataclass(tp):
        return _field_hints(tp)
    kinds = tagged_classes(tp)
    if kinds is None:
        return None
    hints: dict[str, Any] = {}
    for cls in kinds.values():
        for key, hint in _field_hints(cls).items():
            hints.setdefault(key, hint)
    return hints


def unknown_key_message(full_key: str, prefix: str, names: Sequence[str]) -> str:
    """``unknown key 'optim.lrr'; valid keys in 'optim': ...`` (``prefix`` ends with a dot)."""
    section = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
    return f"unknown key '{full_key}'; valid keys in {section}: {', '.join(names)}"


def build_section(cls: type, data: Any, prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``data``; unknown keys are errors.

    Args:
        prefix: dotted path of the section with a trailing dot (``""`` at the top level), for
            the messages.
    """
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the configuration"
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = _field_hints(cls)
    names = list(hints)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(unknown_key_message(f"{prefix}{key}", prefix, names))
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _build_tagged(kinds: Mapping[str, type], data: Any, key: str) -> Any:
    """The member of a tagged section named by ``data["kind"]`` (default: the first kind)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {type(data).__name__}: {data!r}")
    kind = tagged_kind(data, kinds)
    if kind not in kinds:
        raise ConfigError(f"{key}.kind must be one of {', '.join(kinds)}; got {kind!r}")
    cls = kinds[kind]
    own = set(_field_hints(cls))
    for name in data:
        if name not in own:
            owners = [k for k, c in kinds.items() if name in _field_hints(c)]
            if owners:
                raise ConfigError(
                    f"{key}.{name} is a setting of {key}.kind {' / '.join(owners)} only (got {key}.kind {kind}); "
                    f"valid keys for {kind}: {', '.join(f.name for f in dataclasses.fields(cls))}"
                )
    return build_section(cls, data, f"{key}.")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    kinds = tagged_classes(tp)
    if kinds is not None:
        return _build_tagged(kinds, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {'; '.join(errors)}")
    if value is None:
        raise ConfigError(f"{key} must not be null (expected {getattr(tp, '__name__', str(tp))})")
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): copy.deepcopy(v) for k, v in value.items()}
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in a section class, not user input
