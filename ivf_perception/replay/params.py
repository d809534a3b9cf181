"""The live node's parameters, read from the same params YAML the node is started with.

Why: replay evaluation is only worth something if it pairs and pre-processes frames as the robot
did, so replay reads the node's own parameter file (``--ros-args --params-file node.yaml``) and
validates it with the pipeline table the node declares its parameters from
(:class:`ivf_perception.engine.config.PipelineConfig`: same defaults, same checks). Replay uses
the parameters that shape results: ``slop_s``, ``queue_size`` and ``time_jump_threshold_s``
(pairing), ``agc_low_pct``/``agc_high_pct`` and ``homography`` (thermal pre-processing),
``class_names``/``palette`` and ``overlay_alpha`` (outputs). The engine itself is chosen on the
command line (``--variant``/``--weights``), as evaluations usually compare engines: the command
adds that choice to :attr:`NodeParams.applied` and ``Engine.from_config`` builds the engine from
the resulting :class:`~ivf_perception.engine.config.PipelineConfig`, as the node does.

Accepted layouts (ROS 2 parameter files)::

    fusion_node:                 # any node name, or /** for every node
      ros__parameters:
        slop_s: 0.05
        queue_size: 10
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivf_perception.engine.config import PIPELINE_SPECS, PipelineConfig

__all__ = ["NodeParams", "load_node_params", "NODE_ONLY_PARAMETERS"]

_APPLIED = ("slop_s", "queue_size", "time_jump_threshold_s", "agc_low_pct", "agc_high_pct", "homography",
            "class_names", "palette", "overlay_alpha")
NODE_ONLY_PARAMETERS = ("warmup_size", "qos_reliability", "qos_depth", "overlay_enabled", "stream_timeout_s",
                        "diagnostics_period_s", "autostart", "rgb_transport", "thermal_transport")
"""The node's ROS-only parameters: known (not reported as unknown) but meaningless for replay.
Named here because replay may not import the node; a node test keeps the two lists equal."""


@dataclass(frozen=True)
class NodeParams:
    """The node parameters replay applies.

    Attributes:
        config: the validated pipeline configuration (defaults for anything not in the file;
            its engine fields are the node's defaults, replay's engine comes from the command).
        source: where the values came from (a file and node name, or the node's defaults).
        file_values: the parameters as written in the file (for the report), unknown ones included.
        applied: the values of the file (and overrides) that replay applies.
    """

    config: PipelineConfig = field(default_factory=lambda: PipelineConfig.from_values({}))
    source: str = "the fusion node's defaults"
    file_values: dict[str, Any] = field(default_factory=dict)
    applied: dict[str, Any] = field(default_factory=dict)

    @property
    def slop_s(self) -> float:
        return self.config.slop_s

    @property
    def queue_size(self) -> int:
        return self.config.queue_size

    @property
    def time_jump_ns(self) -> int:
        """Stamps this far behind their stream's newest reset the pairing (as in the node)."""
        return int(round(self.config.time_jump_threshold_s * 1e9))

    @property
    def homography(self) -> tuple[float, ...] | None:
        return self.config.homography

    @property
    def overlay_alpha(self) -> float:
        return self.config.overlay_alpha

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        unknown = sorted(set(self.file_values) - PIPELINE_SPECS.keys() - set(NODE_ONLY_PARAMETERS))
        return {"slop_s": c.slop_s, "queue_size": c.queue_size, "time_jump_threshold_s": c.time_jump_threshold_s,
                "agc_pct": [c.agc.low_pct, c.agc.high_pct], "homography": list(c.homography) if c.homography else None,
                "overlay_alpha": c.overlay_alpha, "class_names": list(c.class_names) if c.class_names else None,
                "source": self.source, "file_values": dict(self.file_values), "unknown_parameters": unknown}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter groups become dotted names, as ROS 2 reads them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _node_entry(doc: Any, path: Path, node_name: str | None) -> tuple[str, dict[str, Any]]:
    nodes = {str(k): v["ros__parameters"] for k, v in doc.items()
             if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)} if isinstance(doc, dict) else {}
    if not nodes:
        raise ValueError(f"{path} is not a ROS 2 parameter file: expected 'NODE_NAME: ros__parameters: {{...}}' "
                         "(or '/**: ros__parameters:')")
    if node_name is not None:
        key = next((k for k in nodes if k.strip("/") == node_name.strip("/")), None)
        if key is None:
            raise ValueError(f"node {node_name!r} is not in {path}; it has: {', '.join(nodes)}")
        return key, nodes[key]
    if len(nodes) == 1:
        return next(iter(nodes.items()))
    for key in ("/**", "fusion_node", "/fusion_node"):
        if key in nodes:
            return key, nodes[key]
    raise ValueError(f"{path} holds parameters of several nodes ({', '.join(nodes)}); choose one with --node-name")


def load_node_params(path: str | os.PathLike[str] | None, node_name: str | None = None, *,
                     slop_s: float | None = None, queue_size: int | None = None) -> NodeParams:
    """The node parameters from a params YAML (or the node's defaults), with overrides on top.

    Args:
        path: the params file, or None for the node's defaults.
        node_name: which node entry to use when the file holds several (default: the only one,
            else ``/**``, else ``fusion_node``).
        slop_s, queue_size: override the file (``--slop``/``--queue-size``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a parameter file, the node is not in it, or a value is invalid (the
            node's own validation message).
    """
    values: dict[str, Any] = {}
    source = "the fusion node's defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"params file not found: {p}")
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML: {exc}") from exc
        key, entry = _node_entry(doc, p, node_name)
        values = _flatten(entry)
        source = f"{p} (node {key})"
    applied = {k: v for k, v in values.items() if k in _APPLIED}
    if slop_s is not None or queue_size is not None:
        source += " + command-line overrides"
        applied.update({k: v for k, v in (("slop_s", slop_s), ("queue_size", queue_size)) if v is not None})
    return NodeParams(config=PipelineConfig.from_values(applied), source=source, file_values=values,
                      applied=applied)
