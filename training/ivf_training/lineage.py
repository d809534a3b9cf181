"""Lineage: the chain of training runs behind a run's weights, followed back through ``model.init_from``.

A model trained in stages (the bundled CPU default has seven) starts each stage from a checkpoint
of the stage before. Exported weights list that chain in their sidecar (``lineage``, first to
last), so the shipped file says how to reproduce it after the run directories are gone. Its
records are, in order:

- the file the first run started from, when that is not a run's checkpoint (engine weights such as
  the bundled default for a fine-tune): ``{"weights": "default" | path, "sha256": hex}``, preceded by
  that file's own ``lineage`` when its sidecar has one;
- one record per run: ``{"run": name, "recipe": file | None, "overrides": [...], "max_steps": N,
  "started_from": "<run>/ckpt/<file>" | "default" | path | None}``. ``recipe`` and ``overrides``
  come from the run's ``origin.json`` (``None``/``[]`` for runs started without it);
- where the chain cannot be followed (a run directory or file deleted since, an unreadable
  ``config.yaml``): ``{"weights" | "run": ..., "missing": why}`` in place of what is gone. The export
  still succeeds: the lineage is provenance, the weights are what the user asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ivf_perception.engine.weights import WeightsError, read_sidecar, sidecar_path
from ivf_perception.export.onnx import file_sha256
from ivf_training.build import resolve_init_from
from ivf_training.config import ConfigError
from ivf_training.run_dir import read_origin, read_run_config

__all__ = ["run_lineage"]


def run_lineage(run_dir: str | Path) -> list[dict[str, Any]]:
    """The runs (and starting file) behind ``run_dir``'s weights, first to last (module docstring).

    Raises:
        ConfigError: ``run_dir`` itself is not a run directory (its ancestors' problems are
            recorded as ``missing`` instead).
    """
    newest_first: list[dict[str, Any]] = []
    seen: set[Path] = set()
    current: Path | None = Path(run_dir)
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:  # only a hand-edited config.yaml can point a run at itself
            newest_first.append({"run": current.name, "missing": "model.init_from loops back to this run"})
            break
        seen.add(resolved)
        try:
            cfg = read_run_config(current)
        except ConfigError as exc:
            if not newest_first:
                raise
            newest_first.append({"run": current.name, "missing": str(exc)})
            break
        origin = read_origin(current)
        record: dict[str, Any] = {"run": cfg.name, "recipe": origin.get("recipe"),
                                  "overrides": list(origin.get("overrides", [])), "max_steps": cfg.max_steps,
                                  "started_from": None}
        newest_first.append(record)
        current = None
        if cfg.model.init_from:
            start = resolve_init_from(cfg.model.init_from)
            parent = _run_of_checkpoint(start)
            if parent is not None:
                record["started_from"] = f"{parent.name}/ckpt/{start.name}"
                current = parent
            else:
                record["started_from"] = cfg.model.init_from
                newest_first.extend(reversed(_weights_file_lineage(cfg.model.init_from, start)))
    return newest_first[::-1]


def _run_of_checkpoint(path: Path) -> Path | None:
    """The run directory holding checkpoint ``path`` (``RUN_DIR/ckpt/<file>``), if it still exists."""
    run_dir = path.parent.parent
    return run_dir if path.parent.name == "ckpt" and (run_dir / "config.yaml").is_file() else None


def _weights_file_lineage(name: str, path: Path) -> list[dict[str, Any]]:
    """A starting file that is not a run checkpoint: its own sidecar lineage, then the file."""
    if not path.is_file():
        return [{"weights": name, "missing": f"{path} no longer exists"}]
    earlier: list[dict[str, Any]] = []
    if sidecar_path(path).is_file():
        try:
            earlier = read_sidecar(path).lineage
        except WeightsError as exc:
            earlier = [{"weights": name, "missing": f"lineage unreadable: {exc}"}]
    return [*earlier, {"weights": name, "sha256": file_sha256(path)}]
