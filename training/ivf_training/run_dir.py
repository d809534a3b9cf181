"""The run directory: where a training run keeps its configuration, log and checkpoints.

Layout (``RUN_DIR = out_dir/name``)::

    config.yaml        the resolved configuration (absolute paths); ``resume`` reads only this
    data.json          what was trained/validated on (kinds, folders, counts)
    origin.json        how the run was started: the recipe file and the command-line overrides
                       (runs started through ``ivf-train run``; export builds the lineage from it)
    log.jsonl          one JSON object per line: {"kind": "train"|"val"|"resume", "step": ...}
    ckpt/last.*        latest checkpoint (see ivf_training.checkpoint), ckpt/prev.* the one before
    ckpt/best.safetensors + best.json   model with the best validation ``best_metric``
    summary.json       written when the run reaches max_steps: best, final and step-0 validation
                       (fine-tunes: ``val_at_start``) and the change of each metric
    ckpt/stale-*       files set aside when resuming from an older checkpoint (never deleted)
    tb/                TensorBoard events (ivf_training.tb_logging)
    eval/              reports of ``ivf-train eval`` (ivf_training.evaluate)

Under ``torchrun`` rank 0 alone writes here (the trainer decides who calls these methods).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ivf_perception.models.registry import is_model, with_legacy_args
from ivf_training.checkpoint import save_model_file
from ivf_training.config import LossConfig, TrainConfig, config_from_dict, dump_config
from ivf_training.config.files import read_yaml
from ivf_training.config.losses import LEGACY_LOSS_CONVERSIONS, LEGACY_LOSS_SETTINGS
from ivf_training.config.schema import tagged_classes

__all__ = ["RunDir", "read_run_config", "read_origin"]

_log = logging.getLogger(__name__)


def read_run_config(run_dir: Path) -> TrainConfig:
    """The resolved configuration of a run directory; settings added after the run was written
    get the values it was trained with (model switches and loss settings alike), so resuming
    or exporting an old run rebuilds what it trained."""
    data = read_yaml(Path(run_dir) / "config.yaml", f"{run_dir} is not a run directory (no config.yaml)")
    if isinstance(data, dict) and isinstance(data.get("loss"), dict):
        loss = _loss_settings_of_its_kind(data["loss"])
        kind = _loss_kind(loss)
        if kind in LEGACY_LOSS_CONVERSIONS:
            loss = LEGACY_LOSS_CONVERSIONS[kind](loss)
        data["loss"] = {**LEGACY_LOSS_SETTINGS.get(kind, {}), **loss}
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and isinstance(model.get("variant"), str) and is_model(model["variant"]):
        # switches this run predates keep the values it was trained with (with_legacy_args)
        model["overrides"] = with_legacy_args(model["variant"], model.get("preset"), model.get("overrides") or {})
    return config_from_dict(data)


def read_origin(run_dir: Path) -> dict[str, Any]:
    """``origin.json`` of a run directory: ``{"recipe": ..., "overrides": [...]}``, or ``{}`` for
    a run started without a recipe file, written before the file existed, or whose file is damaged
    (the lineage then names the run without its recipe rather than failing an export)."""
    try:
        origin = json.loads((Path(run_dir) / "origin.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return origin if isinstance(origin, dict) else {}


def _loss_kind(loss: Mapping[str, Any]) -> str:
    """The section's ``kind``, or the default kind (the first member of ``LossConfig``) when absent."""
    return str(loss.get("kind", next(iter(tagged_classes(LossConfig) or {}), "")))


def _loss_settings_of_its_kind(loss: dict[str, Any]) -> dict[str, Any]:
    """The ``loss:`` keys that belong to the section's ``kind``.

    A run directory written while the loss settings were one flat section holds every kind's
    keys (the trainer then read only its kind's): dropping the others lets such a run resume
    and export exactly as it would have. A key no kind knows still fails.
    """
    kinds = tagged_classes(LossConfig) or {}
    own = kinds.get(_loss_kind(loss))
    if own is None:
        return loss
    names = {f.name for f in dataclasses.fields(own)}
    others = {f.name for cls in kinds.values() for f in dataclasses.fields(cls)} - names
    return {k: v for k, v in loss.items() if k not in others}


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (see the module docstring); holds no training state.

    Attributes:
        path: ``RUN_DIR``.
    """

    path: Path

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "ckpt"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    def write_start(self, cfg: TrainConfig, data: Mapping[str, Any], origin: Mapping[str, Any] | None = None) -> None:
        """Create the directory with ``config.yaml``, ``data.json`` and, when given, ``origin.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.path / "config.yaml")
        (self.path / "data.json").write_text(json.dumps(data, indent=2) + "\n")
        if origin is not None:
            (self.path / "origin.json").write_text(json.dumps(dict(origin), indent=2) + "\n")

    def append_log(self, record: Mapping[str, Any]) -> None:
        """One JSON line in ``log.jsonl`` (NaN refused: the log stays valid JSON)."""
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def write_summary(self, result: Mapping[str, Any]) -> None:
        """``summary.json`` at the end of a run: best, final and (fine-tunes) step-0 validation,
        with the change of every metric validated at both ends, so a user sees whether the
        fine-tune helped without reading the log."""
        start, end = result.get("start_val") or {}, result.get("last_val") or {}
        change = {k: end[k] - v for k, v in start.items()
                  if isinstance(v, (int, float)) and isinstance(end.get(k), (int, float))}
        tmp = self.path / "summary.json.tmp"
        tmp.write_text(json.dumps({**result, "change": change}, indent=2, allow_nan=False) + "\n")
        tmp.replace(self.path / "summary.json")

    def save_best(self, state: Mapping[str, torch.Tensor], *, step: int, best_metric: str, value: float | None,
                  metrics: Mapping[str, float | None]) -> None:
        """Write ``ckpt/best.safetensors`` and ``best.json`` (the model first, each atomically)."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_model_file(dict(state), self.ckpt_dir / "best.safetensors", {"step": str(step), "metric": best_metric})
        tmp = self.ckpt_dir / "best.json.tmp"
        tmp.write_text(json.dumps({"step": step, "best_metric": best_metric,
                                   "value": value, "metrics": dict(metrics)}, indent=2) + "\n")
        tmp.replace(self.ckpt_dir / "best.json")

    def rewind(self, step: int, best_step: int | None, tag: str) -> None:
        """Make the directory consistent with a resume from ``ckpt/<tag>`` at ``step``: set
        aside checkpoints and a best written after it, drop later log lines, note the resume."""
        if tag == "prev":
            # last.* is newer (or corrupt): keep it out of the rotation, which would otherwise make
            # it the next "prev"
            self._set_aside(("last.safetensors", "last.state.pt"), f"stale-after-step{step}")
        self._set_aside_stale_best(best_step)
        self._truncate_log(step)

    def _set_aside(self, names: Sequence[str], prefix: str) -> None:
        """Rename checkpoint files that no longer belong to this run's timeline (never delete)."""
        for name in names:
            path = self.ckpt_dir / name
            if path.exists():
                target = path.with_name(f"{prefix}-{name}")
                path.replace(target)
                _log.warning("set aside %s as %s: it is not part of the resumed run", path, target.name)

    def _set_aside_stale_best(self, best_step: int | None) -> None:
        """Rename ``ckpt/best.*`` written after the checkpoint we resume from (e.g. resuming from
        ``prev``): it belongs to discarded progress and must not be exported as this run's best."""
        best_json = self.ckpt_dir / "best.json"
        if not best_json.is_file():
            return
        try:
            written_step = json.loads(best_json.read_text()).get("step")
        except json.JSONDecodeError:
            written_step = None
        if written_step != best_step:
            self._set_aside(("best.safetensors", "best.json"), f"stale-step{written_step}")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after ``step`` (they will be recomputed), note the resume."""
        lines = []
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by the interruption
                    continue
                if record.get("step", 0) <= step:
                    lines.append(line)
        lines.append(json.dumps({"kind": "resume", "step": step, "time": time.time()}))
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.log_path)
