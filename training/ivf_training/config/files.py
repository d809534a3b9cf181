"""Configuration files and command-line overrides: YAML → :class:`TrainConfig` → YAML.

Relative data paths are resolved against the current working directory when the configuration
is loaded (run ``ivf-train`` from the project root) and stored absolute in the run directory, so
``ivf-train resume`` works from anywhere.

A recipe may start from another: ``base: other.yaml`` (a path relative to the recipe's folder)
takes that recipe's settings, and the file's own settings change them (:func:`read_recipe`), so
a training stage states only what it changes from the stage before.
"""

from __future__ import annotations

import copy
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ivf_training.config.schema import (
    ConfigError,
    build_section,
    config_to_dict,
    section_hints,
    tagged_classes,
    tagged_kind,
    unknown_key_message,
)
from ivf_training.config.train import TrainConfig

__all__ = [
    "config_from_dict",
    "parse_overrides",
    "apply_overrides",
    "load_config",
    "absolutize_paths",
    "dump_config",
    "read_yaml",
    "read_recipe",
]


def read_yaml(path: Path, missing: str) -> Any:
    """The YAML document in ``path``; ``missing`` is the message when the file does not exist.

    One reader for recipe files and run directories, so both fail with a ``ConfigError`` that
    names the file.
    """
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe file's settings with its ``base:`` chain applied, before overrides and checks.

    The base's settings come first; the file's own replace them key by key: a mapping merges
    into the base's mapping of the same key, any other value (a number, a list) replaces it.
    A tagged section (``loss``) whose ``kind`` differs from the base's replaces it whole: the
    base's settings of another kind would not be valid for the new one.

    Raises:
        ConfigError: the file or a base is missing or not a mapping, ``base`` is not a file
            name, or the bases form a loop.
    """
    return _read_recipe(Path(path), ())


def _read_recipe(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{chain[0]}: base recipes form a loop: {loop}")
    missing = f"{chain[-1]}: base recipe {path} not found" if chain else f"configuration file not found: {path}"
    loaded = read_yaml(path, missing)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must name another recipe file (e.g. base: stage1.yaml), got {base!r}")
    return _merge_top_level(_read_recipe(path.parent / base, (*chain, resolved)), loaded)


def _merge_top_level(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base`` (see :func:`read_recipe`), replacing tagged sections that change kind."""
    hints = section_hints(TrainConfig) or {}
    out = dict(base)
    for key, value in changes.items():
        old, kinds = out.get(key), tagged_classes(hints.get(key))
        other_kind = bool(kinds) and isinstance(old, dict) and isinstance(value, dict) \
            and tagged_kind({**old, **value}, kinds) != tagged_kind(old, kinds)
        out[key] = copy.deepcopy(value) if other_kind else _merged(old, value)
    return out


def _merged(base: Any, changes: Any) -> Any:
    """Mappings merge key by key (recursively); any other value replaces the base's."""
    if not (isinstance(base, dict) and isinstance(changes, dict)):
        return copy.deepcopy(changes)
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out.get(key), value)
    return out


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data; unknown keys are errors."""
    cfg = build_section(TrainConfig, data, "")
    cfg.validate()
    return cfg


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.sub=value`` strings; values are YAML scalars/lists (``[0.5, 2.0]``, ``null``)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. optim.lr_peak=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied; unknown keys are errors.

    Keys are checked against the dataclass schema, so ``optim.lrr=1`` fails naming ``optim.lrr``
    and listing the valid keys of ``optim``. Below free-form mappings (``model.overrides``,
    ``data.generated.scene``) any key is accepted. Under ``loss`` a key of any kind passes here
    (a later override may set ``loss.kind``); building the section checks it against the kind.
    """
    out = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        node: dict[str, Any] = out
        hints: dict[str, Any] | None = section_hints(TrainConfig)
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if hints is not None:
                if part not in hints:
                    prefix = "".join(p + "." for p in path[:depth])
                    raise ConfigError(unknown_key_message(".".join(path[: depth + 1]), prefix, list(hints)))
                tp = hints[part]
                hints = section_hints(tp)
                if not last and hints is None and typing.get_origin(tp) is not dict:
                    raise ConfigError(f"'{'.'.join(path[: depth + 1])}' is a value, not a section")
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if not isinstance(child, dict):
                    raise ConfigError(f"'{'.'.join(path[: depth + 1])}' is not a mapping in the configuration")
                node = child
    return out


_PATH_LIST_FIELDS = ("train_folders", "train_real", "val_folders", "val_real")


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a recipe file with its ``base:`` chain (or defaults when ``path`` is None), apply
    overrides, validate.

    Relative data paths and the loss's weight files are made absolute against the current
    working directory; a ``name`` left empty becomes ``<file stem>-<timestamp>`` in the trainer.
    """
    data = read_recipe(Path(path)) if path is not None else {}
    try:
        cfg = config_from_dict(apply_overrides(data, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None
    return absolutize_paths(cfg)


def absolutize_paths(cfg: TrainConfig) -> TrainConfig:
    """Make data paths, the loss's weight files (ResNet-50, teacher) and ``out_dir`` absolute (against the cwd)."""
    for name in _PATH_LIST_FIELDS:
        setattr(cfg.data, name, [_absolute(p) for p in getattr(cfg.data, name)])
    for name in cfg.loss.path_fields:
        if getattr(cfg.loss, name):
            setattr(cfg.loss, name, _absolute(getattr(cfg.loss, name)))
    if cfg.model.init_from and cfg.model.init_from != "default":
        cfg.model.init_from = _absolute(cfg.model.init_from)
    if cfg.model.text_features:
        cfg.model.text_features = _absolute(cfg.model.text_features)
    if cfg.model.clip_weights and cfg.model.clip_weights != "random":
        cfg.model.clip_weights = _absolute(cfg.model.clip_weights)
    cfg.out_dir = _absolute(cfg.out_dir)
    return cfg


def _absolute(path: str) -> str:
    """Absolute and lexically normalised (``a/../b`` → ``b``), symlinks kept as written."""
    return os.path.abspath(os.path.expanduser(path))


def dump_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved configuration as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
