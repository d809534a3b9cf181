"""ivf_training: offline training for the ivf_perception fusion+segmentation models.

A separate installable package (``ivf-perception-training``) so robots running the
``ivf_perception`` node never need training dependencies; it depends on ``ivf_perception``
for the models, data readers and metrics, never the other way round.

Entry points: the ``ivf-train`` command (:mod:`ivf_training.cli`), or in Python
``load_config`` → ``start_run(cfg).fit()`` → ``export_engine_weights(run_dir, out)``.
The names below are imported lazily (PEP 562), so ``ivf-train --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "start_run", "resume_run", "export_engine_weights"]

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "ivf_training.config",
    "TrainConfig": "ivf_training.config",
    "load_config": "ivf_training.config",
    "Trainer": "ivf_training.trainer",
    "start_run": "ivf_training.trainer",
    "resume_run": "ivf_training.trainer",
    "export_engine_weights": "ivf_training.export",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ivf_training' has no attribute {name!r}")
