"""ivf_training: offline training for the ivf_perception fusion+segmentation models.

A separate installable package (``ivf-perception-training``) so robots running the
``ivf_perception`` node never need training dependencies; it depends on ``ivf_perception``
for the models, data readers and metrics, never the other way round.

Entry points: the ``ivf-train`` command (:mod:`ivf_training.cli`), or in Python
``load_config`` → ``start_run(cfg).fit()`` → ``export_engine_weights(run_dir, out)``.
"""

from ivf_training.config import ConfigError, TrainConfig, load_config
from ivf_training.trainer import Trainer, export_engine_weights, resume_run, start_run

__all__ = ["ConfigError", "TrainConfig", "Trainer", "load_config", "start_run", "resume_run", "export_engine_weights"]

__version__ = "0.1.0"
