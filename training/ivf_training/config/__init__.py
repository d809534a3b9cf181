"""Typed training configuration: sections, loss settings per kind, YAML files and overrides.

Why typed dataclasses instead of a free dict passed around: every key is declared once with its
type and default, a typo fails at start-up (naming the key and listing the valid ones) instead of
silently being ignored hours into a run, and the resolved configuration written next to the
checkpoints is exactly what ran. The configuration is parsed once at the entry point and unpacked
into plain constructor arguments (STYLE: "a config object passed everywhere" is an anti-pattern).

Modules, one job each: :mod:`~ivf_training.config.schema` (plain data ↔ dataclasses, generic),
:mod:`~ivf_training.config.sections` (model, data, optimiser), :mod:`~ivf_training.config.losses`
(one class per ``loss.kind``), :mod:`~ivf_training.config.train` (the run and its cross-field
checks), :mod:`~ivf_training.config.files` (YAML files, overrides, paths). This package is their
one public face: callers import from ``ivf_training.config``.
"""

from __future__ import annotations

from ivf_training.config.files import (
    absolutize_paths,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
    read_recipe,
)
from ivf_training.config.losses import (
    CMFSLossConfig,
    FusedSegTeacherLossConfig,
    LossConfig,
    LossSettings,
    MAFSStage1LossConfig,
    MAFSStage2LossConfig,
    S4FusionLossConfig,
    TeSGLossConfig,
    UPFusionLossConfig,
)
from ivf_training.config.schema import ConfigError, config_to_dict
from ivf_training.config.sections import DataConfig, GeneratedDataConfig, ModelConfig, OptimConfig
from ivf_training.config.train import TrainConfig

__all__ = [
    "ConfigError",
    "ModelConfig",
    "GeneratedDataConfig",
    "DataConfig",
    "OptimConfig",
    "LossConfig",
    "LossSettings",
    "S4FusionLossConfig",
    "CMFSLossConfig",
    "FusedSegTeacherLossConfig",
    "MAFSStage1LossConfig",
    "MAFSStage2LossConfig",
    "UPFusionLossConfig",
    "TeSGLossConfig",
    "TrainConfig",
    "load_config",
    "read_recipe",
    "config_from_dict",
    "config_to_dict",
    "parse_overrides",
    "apply_overrides",
    "absolutize_paths",
    "dump_config",
]
