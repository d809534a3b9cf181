"""Parameters of the fusion node: the pipeline table plus the node's own, validation, the QoS.

Why a table: the node declares every parameter with a descriptor (type, range, description)
from it, validates startup values and runtime changes with the same functions, and the tests
check the YAML defaults and the launch file against it. The settings the node shares with
replay and the CLI (engine, AGC, registration, class table, overlay, pairing) are declared in
:mod:`ivf_perception.engine.config` and validated there into a
:class:`~ivf_perception.engine.config.PipelineConfig`; this module adds the ROS-only ones (QoS,
diagnostics, lifecycle, warm-up, overlay switch). Nothing here needs a running node; only
:func:`build_qos` and :func:`descriptor` import rclpy, lazily.

Runtime changes: the ``safe`` parameters only affect pairing, pre- or post-processing and are
applied while the node is active; every other parameter is read at ``configure`` (engine, QoS,
topics) and is rejected while the node is active, with a reason saying to deactivate first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ivf_perception.engine.config import (
    AGC_PARAMETERS,
    PIPELINE_PARAMETERS,
    ParameterValueError,
    ParamSpec,
    PipelineConfig,
    agc_config,
    check_range,
    validate_value,
)

__all__ = [
    "PARAMETERS",
    "SPECS",
    "SAFE_PARAMETERS",
    "QOS_RELIABILITIES",
    "FusionNodeConfig",
    "validate_parameter",
    "check_parameter_change",
    "config_from_values",
    "build_qos",
    "descriptor",
]

QOS_RELIABILITIES = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")


def _check_warmup_size(values: list[Any]) -> None:
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ParameterValueError(f"warmup_size must be [height, width], got {values!r}")
    for v in values:
        check_range(SPECS["warmup_size"], v)


NODE_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("warmup_size", "integer_array", [480, 640],
              "[height, width] of the dummy frames run at configure, so the first real frame "
              "does not pay for allocation and autotuning", min_value=16, max_value=8192,
              check=_check_warmup_size),
    ParamSpec("qos_reliability", "string", "best_effort",
              "reliability of the image subscriptions: best_effort (SensorData, matches every "
              "camera driver) or reliable (only matches reliable publishers)",
              choices=QOS_RELIABILITIES),
    ParamSpec("qos_depth", "integer", 5,
              "history depth of the image subscriptions and of the outputs",
              min_value=1, max_value=100),
    ParamSpec("overlay_enabled", "bool", True,
              "publish segmentation/overlay (computed only while someone subscribes)", safe=True),
    ParamSpec("stream_timeout_s", "double", 2.0,
              "an input silent for this long turns the diagnostics to WARN",
              min_value=0.05, max_value=600.0),
    ParamSpec("diagnostics_period_s", "double", 1.0, "period of /diagnostics messages",
              min_value=0.05, max_value=60.0),
    ParamSpec("autostart", "bool", True,
              "configure and activate at startup; false = wait for lifecycle transitions",
              read_only=True),
    ParamSpec("rgb_transport", "string", "raw",
              "raw = sensor_msgs/Image on rgb/image; compressed = sensor_msgs/CompressedImage (JPEG/PNG) "
              "on rgb/image/compressed", choices=TRANSPORTS),
    ParamSpec("thermal_transport", "string", "raw",
              "raw = sensor_msgs/Image on thermal/image; compressed = sensor_msgs/CompressedImage "
              "(PNG, 16-bit for raw counts) on thermal/image/compressed", choices=TRANSPORTS),
)
PARAMETERS: tuple[ParamSpec, ...] = PIPELINE_PARAMETERS + NODE_PARAMETERS
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
SAFE_PARAMETERS: frozenset[str] = frozenset(spec.name for spec in PARAMETERS if spec.safe)


def validate_parameter(name: str, value: Any) -> Any:
    """Check one parameter value on its own; return it normalised (lists as lists).

    ``None`` (not set) is accepted for the optional list parameters.

    Raises:
        ParameterValueError: unknown name or a value of the wrong type, range or form.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise ParameterValueError(f"unknown parameter '{name}'; known: {', '.join(SPECS)}")
    return validate_value(spec, value)


def check_parameter_change(changes: Mapping[str, Any], current: Mapping[str, Any], *, active: bool) -> None:
    """Check a set of runtime parameter changes (one ``set_parameters`` call).

    Args:
        changes: new values by name.
        current: the node's current values (for checks that span parameters: AGC order).
        active: whether the node is active (only safe parameters may change then).

    Raises:
        ParameterValueError: the first rejected change, with the reason.
    """
    for name, value in changes.items():
        spec = SPECS.get(name)
        if spec is None:
            continue  # parameters this table does not own (use_sim_time, ...) are rclpy's
        if spec.read_only:
            raise ParameterValueError(f"{name} is read-only; set it at startup (--params-file or -p)")
        if active and not spec.safe:
            raise ParameterValueError(
                f"{name} cannot change while the node is active; deactivate first, change it, then "
                f"cleanup and configure (safe at runtime: {', '.join(sorted(SAFE_PARAMETERS))})")
        validate_parameter(name, value)
    if changes.keys() & set(AGC_PARAMETERS):  # checked as a set: percentile order, fixed window
        agc_config({**current, **changes})


@dataclass(frozen=True)
class FusionNodeConfig:
    """Validated parameter values, read at configure.

    Attributes:
        pipeline: the settings shared with replay and the CLI (engine, AGC, registration,
            classes, overlay opacity, pairing).
        warmup_size, qos_reliability, qos_depth, overlay_enabled, stream_timeout_s,
            diagnostics_period_s, autostart, rgb_transport, thermal_transport: the node's own
            parameters.
    """

    pipeline: PipelineConfig
    warmup_size: tuple[int, int]
    qos_reliability: str
    qos_depth: int
    overlay_enabled: bool
    stream_timeout_s: float
    diagnostics_period_s: float
    autostart: bool
    rgb_transport: str = "raw"
    thermal_transport: str = "raw"


def config_from_values(values: Mapping[str, Any]) -> FusionNodeConfig:
    """Validate every parameter (missing ones take their defaults) into a config.

    Raises:
        ParameterValueError: the first invalid value, with the reason.
    """
    pipeline = PipelineConfig.from_values(values)
    v = {spec.name: validate_value(spec, values.get(spec.name, spec.default)) for spec in NODE_PARAMETERS}
    return FusionNodeConfig(
        pipeline=pipeline, warmup_size=tuple(v["warmup_size"]), qos_reliability=v["qos_reliability"],
        qos_depth=int(v["qos_depth"]), overlay_enabled=v["overlay_enabled"],
        stream_timeout_s=float(v["stream_timeout_s"]), diagnostics_period_s=float(v["diagnostics_period_s"]),
        autostart=v["autostart"], rgb_transport=v["rgb_transport"], thermal_transport=v["thermal_transport"],
    )


def build_qos(reliability: str, depth: int) -> Any:
    """Image QoS: keep-last ``depth``, volatile, best-effort (SensorData) or reliable.

    A best-effort subscription matches both best-effort and reliable publishers, which is why
    it is the default: QoS mismatches are the most common reason a node "receives nothing".
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if reliability not in QOS_RELIABILITIES:
        raise ParameterValueError(f"qos_reliability must be one of {', '.join(QOS_RELIABILITIES)}, got '{reliability}'")
    policy = ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


_RCL_TYPES = {
    "bool": "PARAMETER_BOOL",
    "integer": "PARAMETER_INTEGER",
    "double": "PARAMETER_DOUBLE",
    "string": "PARAMETER_STRING",
    "integer_array": "PARAMETER_INTEGER_ARRAY",
    "double_array": "PARAMETER_DOUBLE_ARRAY",
    "string_array": "PARAMETER_STRING_ARRAY",
}


def descriptor(spec: ParamSpec) -> Any:
    """The rcl ``ParameterDescriptor`` of a spec (ranges for scalar numbers, choices in the text)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    desc = ParameterDescriptor(name=spec.name, type=getattr(ParameterType, _RCL_TYPES[spec.kind]),
                               description=text, read_only=spec.read_only)
    lo, hi = spec.min_value, spec.max_value
    if lo is None or hi is None:  # every ranged spec sets both ends (ROS ranges are closed)
        return desc
    if spec.kind == "double":
        desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    elif spec.kind == "integer":
        desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    else:
        desc.additional_constraints = f"each entry in [{lo:g}, {hi:g}]"
    return desc
