"""Pipeline settings shared by the live node, bag replay and the CLI: one table, one config.

Why here: the node, replay and the commands must build the same Engine and pair frames the same
way from the same values, so the settings that shape results (engine choice, precision, thermal
AGC, registration, class table, overlay, pairing) are declared once, validated once
(:meth:`PipelineConfig.from_values`) and turned into an Engine by one set of rules
(:func:`engine_arguments`, used by :meth:`Engine.from_config`). The node adds its ROS-only
parameters (QoS, diagnostics, lifecycle) in ``nodes/parameters.py`` and declares every entry of
:data:`PIPELINE_PARAMETERS` as a ROS parameter; replay validates the node's params YAML with the
same table. Nothing here imports rclpy or torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.classes import palette_to_array
from ivf_perception.io.errors import AGCError, HomographyError
from ivf_perception.io.registration import validate_homography
from ivf_perception.io.thermal import AGC_MODES, AGCConfig
from ivf_perception.models.registry import describe_presets

__all__ = [
    "ParamSpec",
    "ParameterValueError",
    "PIPELINE_PARAMETERS",
    "PIPELINE_SPECS",
    "PRECISION_NAMES",
    "GUIDANCE_MODE_NAMES",
    "SCAN_BACKENDS",
    "INFERENCE_BACKENDS",
    "PipelineConfig",
    "validate_value",
    "check_range",
    "agc_config",
    "AGC_PARAMETERS",
    "default_weights",
    "backend_options",
    "engine_arguments",
]

PRECISION_NAMES = ("fp32", "fp16", "bf16")
SCAN_BACKENDS = ("auto", "chunked", "ref", "cuda", "cpu", "triton")
"""User-selectable scans (``models.ops.SCAN_BACKENDS`` less the internal ``export`` form; no torch import here)."""
INFERENCE_BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")
"""Names of ``engine.backends.BACKEND_MODULES`` (spelled out: this module does not import torch)."""
GUIDANCE_MODE_NAMES = ("fallback", "cache", "async")
"""``engine.guidance.GUIDANCE_MODES`` (spelled out: this module does not import torch)."""
BUNDLED_VARIANT, BUNDLED_PRESET = "s4fusion", "tiny"
"""What ``weights: default`` (``weights/s4fusion_tiny_default.safetensors``) holds."""
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ParameterValueError(IvfPerceptionError, ValueError):
    """A parameter value (or a combination of values) is not acceptable; the text says why."""


@dataclass(frozen=True)
class ParamSpec:
    """One setting (a ROS parameter of the node, a key of its params YAML).

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
        check: extra check of a value that passed the kind checks (lists as lists); raises
            :class:`ParameterValueError`.
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
    check: Callable[[Any], None] | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(spec: ParamSpec, value: float) -> None:
    """Raise unless ``value`` lies in the spec's inclusive range."""
    if (spec.min_value is not None and value < spec.min_value) or (
            spec.max_value is not None and value > spec.max_value):
        raise ParameterValueError(
            f"{spec.name} must be in [{spec.min_value}, {spec.max_value}], got {value}")


def validate_value(spec: ParamSpec, value: Any) -> Any:
    """Check one value against its spec; return it normalised (lists as lists).

    ``None`` (not set) is accepted for the optional list parameters.

    Raises:
        ParameterValueError: a value of the wrong type, range or form.
    """
    name, kind = spec.name, spec.kind
    if value is None:
        if spec.default is None:
            return None
        raise ParameterValueError(f"{name} must be set ({spec.description})")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in ("integer", "double"):
        if not _is_number(value) or (kind == "integer" and not isinstance(value, int)):
            raise ParameterValueError(f"{name} must be a finite {kind}, got {value!r}")
        check_range(spec, value)
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise ParameterValueError(f"{name} must be a string, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise ParameterValueError(f"{name} must be one of {', '.join(spec.choices)}, got '{value}'")
    else:
        value = list(value)
    if spec.check is not None:
        spec.check(value)
    return value


def _check_device(value: str) -> None:
    if not _DEVICE_RE.match(value):
        raise ParameterValueError(f"device must be auto, cpu, cuda or cuda:N, got '{value}'")


def _not_empty(name: str, description: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not value.strip():
            raise ParameterValueError(f"{name} must not be empty ({description})")
    return check


def _check_backend(value: str) -> None:
    if value not in INFERENCE_BACKENDS:
        hint = (f"; '{value}' is a selective-scan choice, which is now the scan_backend parameter"
                if value in SCAN_BACKENDS else "")
        raise ParameterValueError(f"backend must be one of {', '.join(INFERENCE_BACKENDS)}, got '{value}'{hint}")


def _check_palette(values: list[Any]) -> None:
    try:
        palette_to_array(values)
    except ValueError as exc:
        raise ParameterValueError(f"palette: {exc}") from None
    if not values:
        raise ParameterValueError("palette must hold one 0xRRGGBB colour per class, got an empty list")


def _check_class_names(values: list[Any]) -> None:
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ParameterValueError(f"class_names must be a non-empty list of non-empty names, got {values!r}")


def _check_homography(values: list[Any]) -> None:
    try:
        validate_homography(values)
    except HomographyError as exc:
        raise ParameterValueError(f"homography: {exc}") from None


AGC_PARAMETERS = ("agc_low_pct", "agc_high_pct", "agc_mode", "agc_fixed_low", "agc_fixed_high", "agc_smoothing")
"""The parameters :func:`agc_config` reads (a change of any of them rebuilds the engine's AGC)."""


def agc_config(values: Mapping[str, Any]) -> AGCConfig:
    """The AGC settings of validated pipeline values (missing ones at their defaults).

    Raises:
        ParameterValueError: a combination the AGC refuses (percentiles out of order, an empty
            fixed window).
    """
    v = {name: values.get(name, PIPELINE_SPECS[name].default) for name in AGC_PARAMETERS}
    try:
        return AGCConfig(float(v["agc_low_pct"]), float(v["agc_high_pct"]), mode=v["agc_mode"],
                         fixed_low=float(v["agc_fixed_low"]), fixed_high=float(v["agc_fixed_high"]),
                         smoothing=float(v["agc_smoothing"]))
    except AGCError as exc:
        raise ParameterValueError(str(exc)) from None


def _check_crop_rows(values: list[Any]) -> None:
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64 for v in values):
        raise ParameterValueError(f"thermal_crop_rows must be [top, bottom], integers in [0, 64], got {values!r}")


_VARIANT_TEXT = ("model family from the registry (s4fusion, ...); 'auto' = the weights' variant "
                 "(s4fusion when weights is 'none')")
_WEIGHTS_TEXT = ("engine weights: a .safetensors file (with its .json sidecar), 'default' = bundled "
                 "(GPU default on CUDA when bundled, else the CPU default; logged at configure), "
                 "'none' = random initialisation (benchmarks, tests)")

PIPELINE_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("variant", "string", "auto", _VARIANT_TEXT, check=_not_empty("variant", _VARIANT_TEXT)),
    ParamSpec("weights", "string", "default", _WEIGHTS_TEXT, check=_not_empty("weights", _WEIGHTS_TEXT)),
    ParamSpec("preset", "string", "",
              f"size preset ({describe_presets()}); empty = the weights' (or the variant's default)"),
    ParamSpec("device", "string", "auto", "auto (CUDA when available), cpu, cuda or cuda:N",
              check=_check_device),
    ParamSpec("precision", "string", "fp32", "fp32, bf16 (autocast) or fp16 (CUDA only)",
              choices=PRECISION_NAMES),
    ParamSpec("scan_backend", "string", "auto",
              "selective-scan implementation of the SSM families: auto (mamba-ssm or Triton on CUDA, the "
              "fused CPU kernel on the CPU, when usable), chunked, ref, cuda, cpu or triton", choices=SCAN_BACKENDS),
    ParamSpec("backend", "string", "torch",
              "inference backend: torch (eager), compile (torch.compile; CUDA graphs on GPU), "
              "onnxruntime or tensorrt (both export and cache an ONNX file of the weights; a .onnx "
              "weights file runs without PyTorch models)", check=_check_backend),
    ParamSpec("backend_cache_dir", "string", "",
              "folder of exported ONNX files and built TensorRT engines; empty = the default "
              "cache folder (IVF_PERCEPTION_CACHE, else the user cache)"),
    ParamSpec("force_rebuild", "bool", False,
              "rebuild cached ONNX files / TensorRT engines at configure instead of reusing them"),
    ParamSpec("slop_s", "double", 0.05,
              "largest accepted |thermal stamp - RGB stamp| of a pair, seconds",
              safe=True, min_value=0.0, max_value=1.0),
    ParamSpec("queue_size", "integer", 10,
              "messages per stream kept while waiting for a partner", min_value=1, max_value=100),
    ParamSpec("palette", "integer_array", None,
              "class colours as 0xRRGGBB integers, index = class id; not set = the weights' palette",
              safe=True, check=_check_palette),
    ParamSpec("class_names", "string_array", None,
              "class names, index = class id; not set = the weights' classes", check=_check_class_names),
    ParamSpec("agc_low_pct", "double", 1.0,
              "16-bit thermal: counts at or below this percentile map to black",
              safe=True, min_value=0.0, max_value=100.0),
    ParamSpec("agc_high_pct", "double", 99.0,
              "16-bit thermal: counts at or above this percentile map to white",
              safe=True, min_value=0.0, max_value=100.0),
    ParamSpec("agc_mode", "string", "percentile",
              "16-bit thermal: percentile (each frame's window, smoothed by agc_smoothing) or fixed "
              "(counts agc_fixed_low..agc_fixed_high; Kelvin x100 on radiometric T-linear cameras)",
              safe=True, choices=AGC_MODES),
    ParamSpec("agc_fixed_low", "double", 0.0,
              "fixed AGC: counts at or below this map to black (27315 = 0 degC in Kelvin x100)",
              safe=True, min_value=-1e9, max_value=1e9),
    ParamSpec("agc_fixed_high", "double", 65535.0,
              "fixed AGC: counts at or above this map to white (37315 = 100 degC in Kelvin x100)",
              safe=True, min_value=-1e9, max_value=1e9),
    ParamSpec("agc_smoothing", "double", 0.0,
              "percentile AGC: weight of the previous window in an exponential moving average of the bounds "
              "(0 = per frame; 0.9 = steady over ~10 frames, no flicker); reset when the pairing resets",
              safe=True, min_value=0.0, max_value=0.99),
    ParamSpec("thermal_crop_rows", "integer_array", [0, 0],
              "[top, bottom] telemetry rows cut from every thermal frame before the AGC (Boson/Lepton RAW16 "
              "frames can carry 1-3 extra rows)", check=_check_crop_rows),
    ParamSpec("homography", "double_array", None,
              "3x3 row-major homography mapping thermal pixels to RGB pixels (9 numbers); not set "
              "= thermal is only resized to the RGB size", check=_check_homography),
    ParamSpec("min_confidence", "double", 0.0,
              "pixels whose largest class probability (softmax) is below this are published as class 0 "
              "(unlabelled); 0 = every pixel keeps its argmax class", min_value=0.0, max_value=1.0),
    ParamSpec("max_input_pixels", "integer", 3840 * 2160,
              "an RGB or thermal image with more pixels is refused with a per-frame error (memory grows with "
              "the pixel count: a 2160x3840 pair took about 4 GB on the CPU); 0 = no limit",
              min_value=0, max_value=2**31 - 1),
    ParamSpec("overlay_alpha", "double", 0.5, "opacity of the class colours in the overlay",
              safe=True, min_value=0.0, max_value=1.0),
    ParamSpec("time_jump_threshold_s", "double", 1.0,
              "a stamp this much older than its stream's newest resets the pairing queues "
              "(bag loop, clock reset)", min_value=0.0, max_value=86400.0),
    ParamSpec("guidance_mode", "string", "fallback",
              "per-frame guidance of guided models (tesg): fallback (none; the network's fallback), cache "
              "(entries `ivf-train tesg-guidance` wrote for these exact images; a frame without one runs the "
              "fallback, reported in FusionStats) or async (a worker runs guidance_function at its own rate)",
              choices=GUIDANCE_MODE_NAMES),
    ParamSpec("guidance_cache", "string", "", "guidance cache folder (guidance_mode cache)"),
    ParamSpec("guidance_max_age_s", "double", 1.0,
              "guidance_mode async: a frame uses the newest guidance computed for a frame at most this many "
              "seconds older (stamp clock), else the fallback", min_value=0.0, max_value=3600.0),
    ParamSpec("guidance_function", "string", "",
              "guidance_mode async: 'package.module:factory'; factory() returns f(rgb, thermal) -> Guidance"),
    ParamSpec("threads", "integer", 0,
              "CPU threads of torch and OpenCV in this process; 0 = auto: usable physical cores "
              "minus one, at least 1, at most 4, so the robot's other processes keep a core",
              min_value=0, max_value=256),
)
PIPELINE_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PIPELINE_PARAMETERS}


@dataclass(frozen=True)
class PipelineConfig:
    """Validated pipeline settings; build with :meth:`from_values`.

    Attributes:
        variant: registry name, or ``auto`` (the weights' variant; s4fusion without weights).
        weights: a ``.safetensors`` file, ``default`` (bundled) or ``none`` (random init).
        preset: size preset, or None for the weights' (or the variant's default).
        device, precision: as :class:`~ivf_perception.engine.Engine` takes them.
        scan_backend: selective-scan implementation; ``auto`` keeps the model's own choice.
        backend: inference backend (``engine.backends``) running the network.
        backend_cache_dir: cache folder of the exporting backends, or None for the default.
        force_rebuild: ignore cached exports and engines.
        agc: AGC of 16-bit images (thermal, and 16-bit gray RGB): percentile (smoothed) or fixed.
        thermal_crop_rows: telemetry rows (top, bottom) cut from thermal frames.
        homography: 9 row-major numbers mapping thermal pixels to RGB pixels, or None.
        class_names, palette: class table overriding the weights', or None.
        overlay_alpha: opacity of the class colours in overlays.
        min_confidence: softmax probability below which a pixel's label becomes class 0.
        max_input_pixels: largest accepted input image, in pixels (0 = no limit).
        slop_s, queue_size, time_jump_threshold_s: the pairer's settings
            (:class:`~ivf_perception.sync.ApproximateTimePairer`).
        threads: CPU threads, 0 = auto (:mod:`ivf_perception.engine.threads`).
        guidance_mode, guidance_cache, guidance_max_age_s, guidance_function: the guidance
            provider of guided models (:mod:`ivf_perception.engine.guidance`).
    """

    variant: str
    weights: str
    preset: str | None
    device: str
    precision: str
    scan_backend: str
    backend: str
    backend_cache_dir: str | None
    force_rebuild: bool
    agc: AGCConfig
    homography: tuple[float, ...] | None
    class_names: tuple[str, ...] | None
    palette: tuple[int, ...] | None
    overlay_alpha: float
    slop_s: float
    queue_size: int
    time_jump_threshold_s: float
    threads: int = 0
    min_confidence: float = 0.0
    max_input_pixels: int = 3840 * 2160
    thermal_crop_rows: tuple[int, int] = (0, 0)
    guidance_mode: str = "fallback"
    guidance_cache: str | None = None
    guidance_max_age_s: float = 1.0
    guidance_function: str | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PipelineConfig:
        """Validate the pipeline entries of ``values`` (missing ones take their defaults).

        Keys that are not pipeline settings are ignored, so a node's full parameter set or a
        params YAML can be passed as it is.

        Raises:
            ParameterValueError: the first invalid value, with the reason.
        """
        v = {spec.name: validate_value(spec, values.get(spec.name, spec.default)) for spec in PIPELINE_PARAMETERS}
        agc = agc_config(v)

        def opt_tuple(key: str) -> tuple[Any, ...] | None:
            return None if v[key] is None else tuple(v[key])

        return cls(
            variant=v["variant"], weights=v["weights"], preset=v["preset"] or None, device=v["device"],
            precision=v["precision"], scan_backend=v["scan_backend"],
            backend=v["backend"], backend_cache_dir=v["backend_cache_dir"] or None,
            force_rebuild=v["force_rebuild"],
            agc=agc, thermal_crop_rows=(int(v["thermal_crop_rows"][0]), int(v["thermal_crop_rows"][1])),
            homography=None if v["homography"] is None else tuple(float(x) for x in v["homography"]),
            class_names=opt_tuple("class_names"), palette=opt_tuple("palette"),
            overlay_alpha=float(v["overlay_alpha"]), slop_s=float(v["slop_s"]), queue_size=int(v["queue_size"]),
            time_jump_threshold_s=float(v["time_jump_threshold_s"]), threads=int(v["threads"]),
            min_confidence=float(v["min_confidence"]), max_input_pixels=int(v["max_input_pixels"]),
            guidance_mode=v["guidance_mode"], guidance_cache=v["guidance_cache"] or None,
            guidance_max_age_s=float(v["guidance_max_age_s"]), guidance_function=v["guidance_function"] or None,
        )


def default_weights(variant: str | None, preset: str | None) -> str:
    """The weights a command uses when none are named: the bundled ones, where they fit.

    The bundled weights are an S4Fusion at its bundled preset. Another variant or an explicit
    preset without weights used to build that model at random initialisation and run it for
    minutes as if it were trained; random weights are now opt-in (``--weights none``).

    Raises:
        ParameterValueError: no weights fit the request; the text lists the bundled weights,
            the weights given (none) and how to opt in to random ones.
    """
    if variant in (None, "auto", BUNDLED_VARIANT) and preset in (None, "", BUNDLED_PRESET):
        return "default"
    asked = "/".join(x for x in (variant or BUNDLED_VARIANT, preset) if x)
    raise ParameterValueError(
        f"no weights for {asked}: the bundled weights ('default') are {BUNDLED_VARIANT}/{BUNDLED_PRESET} and no "
        "weights file was "
        f"given; pass --weights FILE.safetensors trained for {asked}, or --weights none to run it at random "
        "initialisation (benchmarks and tests only: its outputs mean nothing)")


def backend_options(config: PipelineConfig) -> dict[str, Any]:
    """The ``backend_options`` of a config: only what was set, so backends keep their defaults."""
    options: dict[str, Any] = {}
    if config.backend_cache_dir:
        options["cache_dir"] = config.backend_cache_dir
    if config.force_rebuild:
        options["force_rebuild"] = True
    return options


def engine_arguments(config: PipelineConfig) -> tuple[str, dict[str, Any]]:
    """The ``Engine(model, **kwargs)`` call for a config (the one set of rules).

    ``weights: none`` builds the variant at random initialisation (``auto`` = s4fusion);
    otherwise the weights file decides variant and preset unless they are given, and a given
    one that does not match the file fails with the engine's ``WeightsError``. A ``scan_backend``
    other than ``auto`` is passed to the model; ``backend`` picks the Engine's inference backend,
    with ``backend_cache_dir`` and ``force_rebuild`` as its options.
    """
    kwargs: dict[str, Any] = {
        "device": config.device,
        "precision": config.precision,
        "agc": config.agc,
        "homography": None if config.homography is None else list(config.homography),
        "class_names": None if config.class_names is None else list(config.class_names),
        "palette": None if config.palette is None else list(config.palette),
        "preset": config.preset,
        "backend": config.backend,
        "backend_options": backend_options(config),
        "min_confidence": config.min_confidence,
        "max_input_pixels": config.max_input_pixels,
        "thermal_crop_rows": config.thermal_crop_rows,
    }
    if config.scan_backend != "auto":
        kwargs["scan_backend"] = config.scan_backend
    if config.weights.lower() == "none":
        return ("s4fusion" if config.variant == "auto" else config.variant), kwargs
    kwargs["weights"] = config.weights
    return config.variant, kwargs
