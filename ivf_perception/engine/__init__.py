"""Inference engine: device/precision, weights, pre/post-processing and timing."""

from ivf_perception.engine.engine import DEFAULT_WEIGHTS, PRECISIONS, Engine, EngineError, EngineResult, resolve_device
from ivf_perception.engine.preprocess import InputError
from ivf_perception.engine.weights import (
    WeightsError,
    WeightsInfo,
    build_model_from_weights,
    load_weights,
    save_weights,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "PRECISIONS",
    "Engine",
    "EngineError",
    "EngineResult",
    "InputError",
    "WeightsError",
    "WeightsInfo",
    "build_model_from_weights",
    "load_weights",
    "resolve_device",
    "save_weights",
]
