"""Parameters of the fusion node: one table, validation, the engine arguments and the QoS.

Why a table: the node declares every parameter with a descriptor (type, range, description)
from it, validates startup values and runtime changes with the same functions, and the tests
check the YAML defaults and the launch file against it. Nothing here needs a running node; only
:func:`build_qos` and :func:`descriptor` import rclpy, lazily.

Runtime changes: the ``safe`` parameters only affect pairing or post-processing and are applied
while the node is active; every other parameter is read at ``configure`` (engine, QoS, topics)
and is rejected while the node is active, with a reason saying to deactivate first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.classes import palette_to_array
from ivf_perception.io.errors import AGCError, HomographyError
from ivf_perception.io.registration import validate_homography
from ivf_perception.io.thermal import AGCConfig

__all__ = [
    "ParamSpec",
    "PARAMETERS",
    "SPECS",
    "SAFE_PARAMETERS",
    "QOS_RELIABILITIES",
    "FusionNodeConfig",
    "ParameterValueError",
    "validate_parameter",
    "check_parameter_change",
    "config_from_values",
    "engine_arguments",
    "build_qos",
    "descriptor",
]

QOS_RELIABILITIES = ("best_effort", "reliable")
PRECISIONS = ("fp32", "fp16", "bf16")
BACKENDS = ("auto", "chunked", "ref", "cuda")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ParameterValueError(IvfPerceptionError, ValueError):
    """A parameter value (or a combination of values) is not acceptable; the text says why."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Attributes:
        name: parameter name.
        kind: ``bool``, ``integer``, ``double``, ``string``, ``integer_array``,
            ``double_array`` or ``string_array``.
        default: default value; ``None`` declares a typed parameter without a value (an
            optional list: "not set" means "take it from the weights" or "no homography").
        description: shown by ``ros2 param describe``.
        safe: may change while the node is active.
        min_value, max_value: inclusive range of numbers (and of integer array entries).
        choices: allowed strings.
        read_only: only settable at startup (``--params-file`` / ``-p``).
    """

    name: str
    kind: str
    default: Any
    description: str
    safe: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] | None = None
    read_only: bool = False


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("variant", "string", "auto",
              "model family from the registry (s4fusion, ...); 'auto' = the weights' variant "
              "(s4fusion when weights is 'none')"),
    ParamSpec("weights", "string", "default",
              "engine weights: a .safetensors file (with its .json sidecar), 'default' = bundled, "
              "'none' = random initialisation (benchmarks, tests)"),
    ParamSpec("preset", "string", "",
              "size preset (paper, small, tiny); empty = the weights' (or the variant's default)"),
    ParamSpec("device", "string", "auto", "auto (CUDA when available), cpu, cuda or cuda:N"),
    ParamSpec("precision", "string", "fp32", "fp32, bf16 (autocast) or fp16 (CUDA only)",
              choices=PRECISIONS),
    ParamSpec("backend", "string", "auto",
              "selective-scan backend: auto (CUDA kernel when usable), chunked, ref or cuda",
              choices=BACKENDS),
    ParamSpec("warmup_size", "integer_array", [480, 640],
              "[height, width] of the dummy frames run at configure, so the first real frame "
              "does not pay for allocation and autotuning", min_value=16, max_value=8192),
    ParamSpec("slop_s", "double", 0.05,
              "largest accepted |thermal stamp - RGB stamp| of a pair, seconds",
              safe=True, min_value=0.0, max_value=1.0),
    ParamSpec("queue_size", "integer", 10,
              "messages per stream kept while waiting for a partner", min_value=1, max_value=100),
    ParamSpec("qos_reliability", "string", "best_effort",
              "reliability of the image subscriptions: best_effort (SensorData, matches every "
              "camera driver) or reliable (only matches reliable publishers)",
              choices=QOS_RELIABILITIES),
    ParamSpec("qos_depth", "integer", 5,
              "history depth of the image subscriptions and of the outputs",
              min_value=1, max_value=100),
    ParamSpec("palette", "integer_array", None,
              "class colours as 0xRRGGBB integers, index = class id; not set = the weights' palette",
              safe=True),
    ParamSpec("class_names", "string_array", None,
              "class names, index = class id; not set = the weights' classes"),
    ParamSpec("agc_low_pct", "double", 1.0,
              "16-bit thermal: counts at or below this percentile map to black",
              safe=True, min_value=0.0, max_value=100.0),
    ParamSpec("agc_high_pct", "double", 99.0,
              "16-bit thermal: counts at or above this percentile map to white",
              safe=True, min_value=0.0, max_value=100.0),
    ParamSpec("homography", "double_array", None,
              "3x3 row-major homography mapping thermal pixels to RGB pixels (9 numbers); not set "
              "= thermal is only resized to the RGB size"),
    ParamSpec("overlay_enabled", "bool", True,
              "publish segmentation/overlay (computed only while someone subscribes)", safe=True),
    ParamSpec("overlay_alpha", "double", 0.5, "opacity of the class colours in the overlay",
              safe=True, min_value=0.0, max_value=1.0),
    ParamSpec("stream_timeout_s", "double", 2.0,
              "an input silent for this long turns the diagnostics to WARN",
              min_value=0.05, max_value=600.0),
    ParamSpec("diagnostics_period_s", "double", 1.0, "period of /diagnostics messages",
              min_value=0.05, max_value=60.0),
    ParamSpec("time_jump_threshold_s", "double", 1.0,
              "a stamp this much older than its stream's newest resets the pairing queues "
              "(bag loop, clock reset)", min_value=0.0, max_value=86400.0),
    ParamSpec("autostart", "bool", True,
              "configure and activate at startup; false = wait for lifecycle transitions",
              read_only=True),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
SAFE_PARAMETERS: frozenset[str] = frozenset(spec.name for spec in PARAMETERS if spec.safe)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(spec: ParamSpec, value: float) -> None:
    if (spec.min_value is not None and value < spec.min_value) or (
            spec.max_value is not None and value > spec.max_value):
        raise ParameterValueError(
            f"{spec.name} must be in [{spec.min_value}, {spec.max_value}], got {value}")


def validate_parameter(name: str, value: Any) -> Any:
    """Check one parameter value on its own; return it normalised (lists as lists).

    ``None`` (not set) is accepted for the optional list parameters.

    Raises:
        ParameterValueError: unknown name or a value of the wrong type, range or form.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise ParameterValueError(f"unknown parameter '{name}'; known: {', '.join(SPECS)}")
    if value is None:
        if spec.default is None:
            return None
        raise ParameterValueError(f"{name} must be set ({spec.description})")
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in ("integer", "double"):
        if not _is_number(value) or (kind == "integer" and not isinstance(value, int)):
            raise ParameterValueError(f"{name} must be a finite {kind}, got {value!r}")
        _check_range(spec, value)
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise ParameterValueError(f"{name} must be a string, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise ParameterValueError(f"{name} must be one of {', '.join(spec.choices)}, got '{value}'")
        if name == "device" and not _DEVICE_RE.match(value):
            raise ParameterValueError(f"device must be auto, cpu, cuda or cuda:N, got '{value}'")
        if name in ("variant", "weights") and not value.strip():
            raise ParameterValueError(f"{name} must not be empty ({spec.description})")
        return value
    values = list(value)
    if name == "palette":
        try:
            palette_to_array(values)
        except ValueError as exc:
            raise ParameterValueError(f"palette: {exc}") from None
        if not values:
            raise ParameterValueError("palette must hold one 0xRRGGBB colour per class, got an empty list")
    elif name == "class_names":
        if not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ParameterValueError(f"class_names must be a non-empty list of non-empty names, got {values!r}")
    elif name == "homography":
        try:
            validate_homography(values)
        except HomographyError as exc:
            raise ParameterValueError(f"homography: {exc}") from None
    elif name == "warmup_size":
        if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ParameterValueError(f"warmup_size must be [height, width], got {values!r}")
        for v in values:
            _check_range(spec, v)
    return values


def _check_agc(low: Any, high: Any) -> None:
    try:
        AGCConfig(low, high)
    except AGCError as exc:
        raise ParameterValueError(str(exc)) from None


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
    if "agc_low_pct" in changes or "agc_high_pct" in changes:
        _check_agc(changes.get("agc_low_pct", current.get("agc_low_pct")),
                   changes.get("agc_high_pct", current.get("agc_high_pct")))


@dataclass(frozen=True)
class FusionNodeConfig:
    """Validated parameter values, read at configure."""

    variant: str
    weights: str
    preset: str
    device: str
    precision: str
    backend: str
    warmup_size: tuple[int, int]
    slop_s: float
    queue_size: int
    qos_reliability: str
    qos_depth: int
    palette: tuple[int, ...] | None
    class_names: tuple[str, ...] | None
    agc: AGCConfig
    homography: tuple[float, ...] | None
    overlay_enabled: bool
    overlay_alpha: float
    stream_timeout_s: float
    diagnostics_period_s: float
    time_jump_threshold_s: float
    autostart: bool


def config_from_values(values: Mapping[str, Any]) -> FusionNodeConfig:
    """Validate every parameter (missing ones take their defaults) into a config.

    Raises:
        ParameterValueError: the first invalid value, with the reason.
    """
    v = {spec.name: validate_parameter(spec.name, values.get(spec.name, spec.default)) for spec in PARAMETERS}
    _check_agc(v["agc_low_pct"], v["agc_high_pct"])

    def opt_tuple(key: str) -> tuple[Any, ...] | None:
        return None if v[key] is None else tuple(v[key])

    return FusionNodeConfig(
        variant=v["variant"], weights=v["weights"], preset=v["preset"], device=v["device"],
        precision=v["precision"], backend=v["backend"], warmup_size=tuple(v["warmup_size"]),
        slop_s=float(v["slop_s"]), queue_size=int(v["queue_size"]),
        qos_reliability=v["qos_reliability"], qos_depth=int(v["qos_depth"]),
        palette=opt_tuple("palette"), class_names=opt_tuple("class_names"),
        agc=AGCConfig(float(v["agc_low_pct"]), float(v["agc_high_pct"])),
        homography=None if v["homography"] is None else tuple(float(x) for x in v["homography"]),
        overlay_enabled=v["overlay_enabled"], overlay_alpha=float(v["overlay_alpha"]),
        stream_timeout_s=float(v["stream_timeout_s"]), diagnostics_period_s=float(v["diagnostics_period_s"]),
        time_jump_threshold_s=float(v["time_jump_threshold_s"]), autostart=v["autostart"],
    )


def engine_arguments(config: FusionNodeConfig) -> tuple[str, dict[str, Any]]:
    """The ``Engine(model, **kwargs)`` call for a config, the same rules as the CLI's.

    ``weights: none`` builds the variant at random initialisation (``auto`` = s4fusion);
    otherwise the weights file decides variant and preset unless they are given, and a given
    one that does not match the file fails with the engine's ``WeightsError``.
    """
    kwargs: dict[str, Any] = {
        "device": config.device,
        "precision": config.precision,
        "agc": config.agc,
        "homography": None if config.homography is None else list(config.homography),
        "class_names": None if config.class_names is None else list(config.class_names),
        "palette": None if config.palette is None else list(config.palette),
        "scan_backend": config.backend,
        "preset": config.preset or None,
    }
    if config.weights.lower() == "none":
        return ("s4fusion" if config.variant == "auto" else config.variant), kwargs
    kwargs["weights"] = config.weights
    return config.variant, kwargs


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
    if spec.kind == "double" and spec.min_value is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min_value),
                                                        to_value=float(spec.max_value), step=0.0)]
    elif spec.kind == "integer" and spec.min_value is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
    elif spec.min_value is not None:
        desc.additional_constraints = f"each entry in [{spec.min_value:g}, {spec.max_value:g}]"
    return desc
