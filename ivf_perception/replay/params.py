"""The live node's pairing parameters, read from the same params YAML the node is started with.

Why: replay evaluation is only worth something if it pairs frames as the robot did, so replay
takes ``slop_s`` and ``queue_size`` from the node's own parameter file (``ros2 run ...
--ros-args --params-file node.yaml``) rather than from separate options that could drift.

Accepted layouts (ROS 2 parameter files)::

    fusion_node:                 # any node name, or /** for every node
      ros__parameters:
        slop_s: 0.05
        queue_size: 10
        sync:                    # nested groups are flattened (sync.slop_s) as ROS does
          slop_s: 0.05

A ``homography`` parameter (9 numbers, row-major) is applied to the engine like the node does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivf_perception.sync import ApproximateTimePairer

__all__ = ["PairingParams", "load_pairing_params", "TIME_JUMP_NS"]

_DEFAULTS = ApproximateTimePairer()
DEFAULT_SLOP_S: float = _DEFAULTS.slop_s
DEFAULT_QUEUE_SIZE: int = _DEFAULTS.queue_size
TIME_JUMP_NS = 1_000_000_000
"""A header stamp more than this far behind its stream's latest one resets the pairing (a bag that
loops, or a clock reset); smaller steps back are counted as out-of-order messages."""


@dataclass(frozen=True)
class PairingParams:
    """What the pairing needs from the node's configuration.

    Attributes:
        slop_s: largest accepted |thermal − RGB| header stamp difference, seconds.
        queue_size: messages kept per stream while waiting for a partner.
        homography: optional 3×3 thermal→RGB registration (9 numbers, row-major).
        source: where the values came from (a file and node name, or ``defaults``).
        node_parameters: every parameter of that node, for the report's configuration section.
    """

    slop_s: float = DEFAULT_SLOP_S
    queue_size: int = DEFAULT_QUEUE_SIZE
    homography: tuple[float, ...] | None = None
    source: str = "defaults of ivf_perception.sync.ApproximateTimePairer"
    node_parameters: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"slop_s": self.slop_s, "queue_size": self.queue_size,
                "homography": list(self.homography) if self.homography else None, "source": self.source,
                "node_parameters": dict(self.node_parameters)}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _pick(flat: dict[str, Any], name: str) -> Any:
    """``name`` itself, else the one dotted parameter ending in ``.name`` (ambiguity is an error)."""
    if name in flat:
        return flat[name]
    matches = sorted(k for k in flat if k.endswith(f".{name}"))
    if len(matches) > 1:
        raise ValueError(f"several parameters could be {name}: {', '.join(matches)}; keep one")
    return flat[matches[0]] if matches else None


def load_pairing_params(path: str | os.PathLike[str] | None, node_name: str | None = None,
                        slop_s: float | None = None, queue_size: int | None = None) -> PairingParams:
    """Pairing parameters from a node params YAML, with explicit overrides on top.

    Args:
        path: the params file, or None for the pairing defaults.
        node_name: which node entry to use when the file holds several (default: the one that
            has ``slop_s``/``queue_size``, else ``/**``, else the only entry).
        slop_s, queue_size: override the file (e.g. ``--slop`` on the command line).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a parameter file, the node is not in it, or a value is invalid.
    """
    params = PairingParams()
    if path is not None:
        params = _from_file(Path(path), node_name)
    if slop_s is not None or queue_size is not None:
        params = PairingParams(
            slop_s=params.slop_s if slop_s is None else float(slop_s),
            queue_size=params.queue_size if queue_size is None else int(queue_size),
            homography=params.homography, source=f"{params.source} + command-line overrides",
            node_parameters=params.node_parameters)
    ApproximateTimePairer(params.slop_s, params.queue_size)  # the pairer validates both values
    return params


def _from_file(path: Path, node_name: str | None) -> PairingParams:
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    nodes = {str(k): v["ros__parameters"] for k, v in (doc or {}).items()
             if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)} if isinstance(doc, dict) else {}
    if not nodes:
        raise ValueError(f"{path} is not a ROS 2 parameter file: expected 'NODE_NAME: ros__parameters: {{...}}' "
                         "(or '/**: ros__parameters:')")
    if node_name is not None:
        key = next((k for k in nodes if k.strip("/") == node_name.strip("/")), None)
        if key is None:
            raise ValueError(f"node {node_name!r} is not in {path}; it has: {', '.join(nodes)}")
    else:
        with_sync = [k for k, v in nodes.items() if {"slop_s", "queue_size"} & {n.split(".")[-1] for n in _flatten(v)}]
        key = with_sync[0] if len(with_sync) == 1 else "/**" if "/**" in nodes else next(iter(nodes))
        if len(with_sync) > 1:
            raise ValueError(f"several nodes in {path} set pairing parameters ({', '.join(with_sync)}); "
                             "choose one with --node-name")
    flat = _flatten(nodes[key])
    slop, queue, homography = _pick(flat, "slop_s"), _pick(flat, "queue_size"), _pick(flat, "homography")
    if isinstance(homography, (list, tuple)) and not homography:  # ROS parameters cannot be null: [] = none
        homography = None
    if homography is not None:
        if not isinstance(homography, (list, tuple)) or len(homography) != 9:
            raise ValueError(f"homography in {path} must be 9 numbers (row-major 3x3), got {homography!r}")
        homography = tuple(float(v) for v in homography)
    return PairingParams(
        slop_s=DEFAULT_SLOP_S if slop is None else float(slop),
        queue_size=DEFAULT_QUEUE_SIZE if queue is None else int(queue),
        homography=homography, source=f"{path} (node {key})", node_parameters=flat)
