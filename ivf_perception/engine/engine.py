"""The Engine: the one place that owns device, precision, the model and pre/post-processing.

The live node, bag replay, the CLI and evaluation all build it with :meth:`Engine.from_config`
and call :meth:`Engine.infer` with images as decoded (thermal raw), so every front door produces
identical images for identical inputs (DESIGN §1): thermal AGC, registration and input
validation happen here, configured at construction, and nowhere else. Nothing else in the
package picks a device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ivf_perception.engine.backends import BackendContext, BackendOutput, InferenceBackend, create_backend
from ivf_perception.engine.backends.base import PRECISIONS
from ivf_perception.engine.backends.onnx_file import is_onnx_file, onnx_weights_info
from ivf_perception.engine.config import PipelineConfig, engine_arguments
from ivf_perception.engine.default_weights import DEFAULT_WEIGHTS_TABLE, WEIGHTS_DIR, resolve_default_weights
from ivf_perception.engine.guidance import (
    NOT_GUIDED,
    FallbackGuidanceProvider,
    GuidanceProvider,
    GuidanceStatus,
    create_guidance_provider,
)
from ivf_perception.engine.postprocess import logits_to_labels, make_overlay, to_uint8_rgb
from ivf_perception.engine.preprocess import pad_to, prepare_batch
from ivf_perception.engine.threads import apply_threads
from ivf_perception.engine.timing import StageTimer
from ivf_perception.engine.weights import WeightsError, WeightsInfo, build_model_from_weights, check_expected
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.guidance import Guidance
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE, palette_to_array
from ivf_perception.io.registration import validate_homography
from ivf_perception.io.thermal import AGCConfig, AGCState
from ivf_perception.models import FusionSegModel, build_model

__all__ = ["Engine", "EngineResult", "EngineError", "PRECISIONS", "DEFAULT_WEIGHTS", "resolve_device"]

_log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = next(row for row in DEFAULT_WEIGHTS_TABLE if row.device == "cpu").path(WEIGHTS_DIR)
"""The CPU default (always bundled); ``weights="default"`` picks per device (:mod:`.default_weights`)."""


_MISSING_DEFAULT = (f"bundled weights {DEFAULT_WEIGHTS} are missing; reinstall the package or "
                    "run `make train-default` to train them")


class EngineError(IvfPerceptionError, ValueError):
    """The engine cannot be built as requested (device, precision, weights/model mismatch)."""


@dataclass
class EngineResult:
    """One fused frame.

    Attributes:
        fused: H×W×3 uint8 RGB.
        labels: H×W uint8 class ids, or None for fusion-only models.
        rgb: the validated H×W×3 uint8 input, kept for overlays.
        timings_ms: per-stage latency of the call that produced this result (shared by a batch).
        cpu_ms: the same stages' CPU time on the calling thread (see ``engine.timing``).
        guidance: how the frame was guided (source ``none`` for models that take no guidance).
    """

    fused: np.ndarray
    labels: np.ndarray | None
    rgb: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    guidance: GuidanceStatus = NOT_GUIDED
    _palette: list[int] | None = None

    def overlay(self, alpha: float = 0.5, on: str = "rgb") -> np.ndarray | None:
        """Class colours blended over the RGB input (``on="rgb"``) or the fused image.

        Computed on request: the node only calls it when someone subscribes to the overlay.
        """
        if self.labels is None or self._palette is None:
            return None
        base = self.fused if on == "fused" else self.rgb
        return make_overlay(base, self.labels, self._palette, alpha)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None → CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device '{device}' requested but CUDA is not available here; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"device '{device}' is not supported (use auto, cpu or cuda[:N])")
    return dev


class Engine:
    """Fusion + segmentation inference on numpy images.

    Args:
        model: a registry name (``"s4fusion"``) or a built ``FusionSegModel``.
        weights: a ``.safetensors`` engine weights file (with its JSON sidecar), ``"default"``
            for the bundled weights, an ``.onnx`` file (exported by ``ivf-perception
            export-onnx``; runs with backend ``onnxruntime`` or ``tensorrt`` and builds no
            PyTorch model: classes, palette and variant come from its metadata), or None for
            random initialisation (tests, benchmarks).
        preset: size preset when building by name without weights.
        num_classes: class count when building by name without weights.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32``, ``fp16`` (CUDA only) or ``bf16`` (autocast; the selective scan
            itself always accumulates in fp32).
        agc: percentile AGC settings for 16-bit thermal (and 16-bit gray RGB).
        homography: optional 3×3 matrix (or 9 row-major numbers) warping thermal into the
            RGB frame.
        class_names, palette: override the sidecar's (or MFNet's) class table; class_names
            must name every class of the model.
        backend: the inference backend that runs the network (``torch``: eager PyTorch,
            ``compile``, ``onnxruntime``, ``tensorrt``; see :mod:`ivf_perception.engine.backends`);
            pre- and post-processing stay here. A backend with a fixed input size gets every
            batch padded to it (never resized) and its outputs cropped back; a larger input is
            an :class:`EngineError`.
        backend_options: backend-specific settings (``cache_dir``, ``force_rebuild``, ...).
        min_confidence: labels of pixels whose softmax maximum is below it become class 0.
        max_input_pixels: an input image with more pixels is refused (:class:`InputError`)
            before any work; 0 = no limit.
        thermal_crop_rows: telemetry rows (top, bottom) cut from every thermal frame.
        guidance: where a guided model (TeSG) gets per-frame guidance
            (:mod:`ivf_perception.engine.guidance`); None = the fallback provider. The engine owns
            it (:meth:`release` closes it). A provider other than ``fallback`` needs a model that
            accepts guidance on a backend that passes it (``torch``).
        model_overrides: extra constructor arguments (e.g. ``scan_backend``).
    """

    def __init__(self, model: str | nn.Module = "s4fusion", *, weights: str | Path | None = None,
                 preset: str | None = None, num_classes: int | None = None,
                 device: str | torch.device | None = "auto", precision: str = "fp32",
                 agc: AGCConfig | None = None, homography: Sequence[float] | np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, palette: Sequence[int] | None = None,
                 backend: str = "torch", backend_options: dict[str, Any] | None = None,
                 min_confidence: float = 0.0, max_input_pixels: int = 0,
                 thermal_crop_rows: Sequence[int] = (0, 0), guidance: GuidanceProvider | None = None,
                 **model_overrides: Any) -> None:
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise EngineError(f"precision '{precision}' is not supported; use one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and self.device.type != "cuda":
            raise EngineError("precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
        self.precision = precision
        if not 0.0 <= min_confidence <= 1.0:
            raise EngineError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.min_confidence = float(min_confidence)
        if max_input_pixels < 0:
            raise EngineError(f"max_input_pixels must be 0 (no limit) or positive, got {max_input_pixels}")
        self.max_input_pixels = int(max_input_pixels)
        if len(thermal_crop_rows) != 2 or min(thermal_crop_rows) < 0:
            raise EngineError(f"thermal_crop_rows must be [top, bottom] >= 0, got {list(thermal_crop_rows)}")
        self.thermal_crop_rows = (int(thermal_crop_rows[0]), int(thermal_crop_rows[1]))
        self.set_agc(agc or AGCConfig())
        self._homography = None if homography is None else validate_homography(homography)
        self.info: WeightsInfo | None = None
        self.weights_path: Path | None = None
        self.weights_choice = ""  # why ``default`` meant this file (empty for an explicit file)

        self.model: FusionSegModel | None = None
        if weights is not None and is_onnx_file(weights):
            self._load_onnx(model, Path(weights), preset, num_classes, model_overrides)
        else:
            net = (self._load(model, weights, preset, num_classes, model_overrides) if weights is not None
                   else model if isinstance(model, nn.Module)
                   else build_model(model, preset=preset, num_classes=num_classes, **model_overrides))
            if not isinstance(net, FusionSegModel):
                raise EngineError(f"{type(net).__name__} is not a FusionSegModel")
            self.model = net.to(self.device).eval()
            self._variant = getattr(net, "variant", type(net).__name__)
            self._preset = getattr(net, "preset", "")
            self._num_classes = int(getattr(net, "num_classes", 0))
            self.input_multiple = int(net.input_multiple)
        self.backend: InferenceBackend = create_backend(backend, BackendContext(
            self.model, self.device, precision, self.weights_path, dict(backend_options or {})))
        self.guidance = guidance or FallbackGuidanceProvider()
        self._warming = False
        self.uses_guidance = bool(getattr(self.model, "accepts_guidance", False)) and self.backend.accepts_guidance
        if self.guidance.mode != "fallback" and not self.uses_guidance:
            self.guidance.close()
            why = (f"{self._variant} takes no guidance" if not getattr(self.model, "accepts_guidance", False)
                   else f"backend {self.backend.name} runs the network without guidance")
            raise EngineError(f"guidance_mode {self.guidance.mode} needs a guided model (tesg) on the torch "
                              f"backend, but {why}; use guidance_mode fallback")

        n = self.num_classes
        default_names = list(MFNET_CLASSES) if n == len(MFNET_CLASSES) else [f"class_{i}" for i in range(n)]
        default_palette = list(MFNET_PALETTE) if n == len(MFNET_PALETTE) else []
        if self.info is not None:
            default_names = self.info.classes or default_names
            default_palette = self.info.palette or default_palette
        if class_names is not None and len(class_names) != n:
            source = "" if self.weights_path is None else f" of {self.weights_path}"
            raise EngineError(f"class_names has {len(class_names)} names but the model has {n} classes{source}; "
                              "give one name per class or leave it unset")
        self.class_names = list(class_names) if class_names is not None else default_names
        self.set_palette(palette if palette is not None else default_palette)

    # ------------------------------------------------------------------ construction

    def _load(self, model: str | nn.Module, weights: str | Path, preset: str | None,
              num_classes: int | None, overrides: dict[str, Any]) -> nn.Module:
        path = Path(weights)
        if str(weights) == "default":
            choice = resolve_default_weights(self.device)
            if not choice.path.is_file():
                raise WeightsError(_MISSING_DEFAULT)
            path, self.weights_choice = choice.path, choice.reason
            _log.debug("%s", choice.reason)  # the front doors (node, commands) show it at their own level
        self.weights_path = path
        built = model if isinstance(model, nn.Module) else None
        variant = None if built is not None or model == "auto" else str(model)
        net, self.info = build_model_from_weights(path, variant=variant, preset=preset, num_classes=num_classes,
                                                  model=built, **overrides)
        return net

    def _load_onnx(self, model: str | nn.Module, path: Path, preset: str | None, num_classes: int | None,
                   overrides: dict[str, Any]) -> None:
        """An ONNX weights file: no PyTorch model, the description from its metadata."""
        if isinstance(model, nn.Module) or overrides:
            given = type(model).__name__ if isinstance(model, nn.Module) else ", ".join(overrides)
            raise EngineError(f"{path} is an ONNX file that holds the whole network; a model or model options "
                              f"({given}) cannot apply to it: pass a variant name (or 'auto') only")
        info, multiple = onnx_weights_info(path)
        check_expected(path, info, variant=None if model == "auto" else str(model), preset=preset,
                       num_classes=num_classes)
        self.weights_path, self.info = path, info
        self._variant, self._preset, self._num_classes = info.variant, info.preset, info.num_classes
        self.input_multiple = multiple

    @classmethod
    def from_config(cls, config: PipelineConfig) -> Engine:
        """The engine a node, replay or a command asks for (:func:`~.config.engine_arguments`).

        Also sets the process's CPU thread pools from ``config.threads`` (0 = auto,
        :func:`~ivf_perception.engine.threads.apply_threads`): every front door builds its
        engine here, so none of them can forget the non-oversubscribing default.
        """
        apply_threads(config.threads)
        model, kwargs = engine_arguments(config)
        kwargs["guidance"] = create_guidance_provider(
            config.guidance_mode, cache_dir=config.guidance_cache, max_age_s=config.guidance_max_age_s,
            function=config.guidance_function)
        return cls(model, **kwargs)

    @classmethod
    def default(cls, **kwargs: Any) -> Engine:
        """The bundled default weights for the engine's device (the GPU default on CUDA when bundled)."""
        return cls("auto", weights="default", **kwargs)

    # ------------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def preset(self) -> str:
        return self._preset

    @property
    def agc(self) -> AGCConfig:
        """Percentile AGC applied to 16-bit images in pre-processing."""
        return self._agc

    @property
    def homography(self) -> np.ndarray | None:
        """The 3×3 thermal → RGB registration, or None (thermal is only resized)."""
        return self._homography

    def set_agc(self, agc: AGCConfig) -> None:
        """Replace the AGC settings (safe at runtime: each call of :meth:`infer_batch` reads them
        once); the streams' smoothed windows start again from their next frame."""
        if not isinstance(agc, AGCConfig):
            raise TypeError(f"agc must be an AGCConfig, got {type(agc).__name__}")
        self._agc = agc
        self._agc_streams = {"rgb": AGCState(agc), "thermal": AGCState(agc)}

    def reset_agc(self) -> None:
        """Forget the smoothed AGC windows (a discontinuity: bag loop, clock jump, new camera);
        the node and replay call it when their pairer resets."""
        for state in self._agc_streams.values():
            state.reset()

    def set_palette(self, palette: Sequence[int]) -> None:
        """Replace the class colours (safe at runtime: only post-processing uses them)."""
        palette_to_array(palette)  # validates every entry
        if len(palette) < self.num_classes:
            _log.warning("palette has %d colours for %d classes; the rest are drawn black",
                         len(palette), self.num_classes)
        self.palette = [int(c) for c in palette]

    def training_domain(self) -> str:
        """What the weights were trained on, for the log line a user reads at startup."""
        if self.info is None:
            return "no weights: random initialisation, outputs mean nothing"
        domain = " + ".join(self.info.training_domain) or "unknown (the sidecar does not record it)"
        if self.num_classes and self.info.training_domain and "labelled datasets" not in self.info.training_domain:
            domain += "; class labels were learnt from synthetic scenes only"
        return domain

    def describe(self) -> dict[str, Any]:
        """A summary for logs, diagnostics and reports."""
        return {
            "variant": self.variant,
            "preset": self.preset,
            "num_classes": self.num_classes,
            "device": str(self.device),
            "precision": self.precision,
            **self.backend.describe(),
            **(self.guidance.describe() if self.uses_guidance else {}),
            "parameters": None if self.model is None else sum(p.numel() for p in self.model.parameters()),
            "weights": None if self.info is None else {"recipe": self.info.recipe.get("name"),
                                                        "metrics": self.info.metrics,
                                                        "training_domain": self.info.training_domain},
        }

    # ------------------------------------------------------------------ inference

    def infer(self, rgb: np.ndarray, thermal: np.ndarray, *, labels: bool = True,
              stamp_s: float = 0.0) -> EngineResult:
        """Fuse and segment one pair, images as decoded (see ``engine.preprocess``).

        RGB: H×W×3 uint8 (or gray H×W, uint16 raw counts through the AGC); thermal: H×W uint8,
        uint16 raw counts, float in [0, 1], or H×W×3 false colour. ``labels=False`` skips the
        class-id image (the argmax is the largest post-processing cost; the node skips it while
        nothing consumes labels): the result's ``labels`` is then None. ``stamp_s``: the RGB header
        stamp in seconds (the async guidance provider measures guidance age with it).
        """
        return self.infer_batch([rgb], [thermal], labels=labels, stamps_s=[stamp_s])[0]

    def infer_batch(self, rgbs: Sequence[np.ndarray], thermals: Sequence[np.ndarray], *,
                    labels: bool = True, stamps_s: Sequence[float] | None = None) -> list[EngineResult]:
        """Fuse and segment a batch of pairs; images may differ in size (padded together).

        ``labels=False``: fused images only (see :meth:`infer`). ``stamps_s``: RGB header stamps
        (seconds) for the guidance provider; default 0.

        Raises:
            GuidanceProviderError: a strict guidance cache has no valid entry for a pair.
        """
        timer = StageTimer(self.device)
        with timer.stage("preprocess"):
            batch = prepare_batch(list(rgbs), list(thermals), multiple=self.input_multiple,
                                  device=self.device, agc=self._agc_streams["thermal"],
                                  homography=self._homography, max_pixels=self.max_input_pixels,
                                  rgb_agc=self._agc_streams["rgb"], thermal_crop=self.thermal_crop_rows)
            guidance, statuses = self._guidance(rgbs, thermals, stamps_s, batch.sizes, batch.rgb)
        with timer.stage("inference"):
            out = self.infer_tensors(batch.rgb, batch.thermal, guidance)
        with timer.stage("postprocess"):
            fused = to_uint8_rgb(out.fused)
            ids = logits_to_labels(out.logits, self.min_confidence) if out.logits is not None and labels else None
            results = []
            for i, (h, w) in enumerate(batch.sizes):
                results.append(EngineResult(
                    fused=np.ascontiguousarray(fused[i, :h, :w]),
                    labels=None if ids is None else np.ascontiguousarray(ids[i, :h, :w]),
                    rgb=batch.rgb_u8[i],
                    guidance=statuses[i],
                    _palette=self.palette if ids is not None else None,
                ))
        for r in results:
            r.timings_ms, r.cpu_ms = dict(timer.ms), dict(timer.cpu_ms)
        return results

    def _guidance(self, rgbs: Sequence[np.ndarray], thermals: Sequence[np.ndarray],
                  stamps_s: Sequence[float] | None, sizes: Sequence[tuple[int, int]],
                  padded: torch.Tensor) -> tuple[Guidance | None, list[GuidanceStatus]]:
        """The provider's guidance for every pair, stacked and padded like the images; the
        fallback for the whole batch unless every pair has compatible guidance."""
        if not self.uses_guidance:
            return None, [NOT_GUIDED] * len(rgbs)
        if self._warming:
            tokens = getattr(self.model, "fallback_text", None)
            if isinstance(tokens, torch.Tensor):
                empty = Guidance(mask=torch.zeros_like(padded[:, :1]),
                                 text_tokens=torch.zeros(len(rgbs), *tokens.shape, device=self.device))
                return empty, [GuidanceStatus("fallback", reason="warm-up")] * len(rgbs)
        stamps = list(stamps_s) if stamps_s is not None else [0.0] * len(rgbs)
        pairs = [self.guidance.guidance_for(r, t, float(s)) for r, t, s in zip(rgbs, thermals, stamps)]
        given = [g for g, _ in pairs if g is not None]
        statuses = [status for _, status in pairs]
        if not given:
            return None, statuses
        if len(given) < len(pairs) or len({g.text_tokens.shape[1:] for g in given}) > 1:
            reason = "the batch mixes frames with and without guidance (or texts of different lengths)"
            return None, [GuidanceStatus("fallback", reason=reason) for _ in statuses]
        height, width = padded.shape[-2:]
        padded_masks = [g.padded(height - h, width - w).mask for g, (h, w) in zip(given, sizes)]
        stacked = Guidance(mask=torch.cat(padded_masks).to(self.device),
                           text_tokens=torch.cat([g.text_tokens for g in given]).to(self.device),
                           source=given[0].source, age_s=max(g.age_s for g in given))
        return stacked, statuses

    def infer_tensors(self, rgb: torch.Tensor, thermal: torch.Tensor,
                      guidance: Guidance | None = None) -> BackendOutput:
        """The network's float outputs for a prepared batch: what backends are compared on.

        Args:
            rgb, thermal: (B, 3, H, W) and (B, 1, H, W) float in [0, 1] on :attr:`device`, H and W
                multiples of :attr:`input_multiple` (as ``prepare_batch`` makes them).
            guidance: for a guided model, mask (B, 1, H, W) and text tokens, padded like the
                images; None runs the fallback.

        Returns:
            ``fused`` and ``logits`` at H×W: a fixed-size backend's input is padded to its size
            (edge replication) and its outputs cropped back.
        """
        if guidance is not None:
            return self.backend.run_guided(rgb, thermal, guidance)
        size = self.backend.fixed_size
        h, w = rgb.shape[-2:]
        if size is None or (h, w) == tuple(size):
            return self.backend.run(rgb, thermal)
        self._check_fits(h, w, size)
        out = self.backend.run(pad_to(rgb, size), pad_to(thermal, size))
        return BackendOutput(out.fused[..., :h, :w], None if out.logits is None else out.logits[..., :h, :w])

    def _check_fits(self, h: int, w: int, size: tuple[int, int]) -> None:
        if h > size[0] or w > size[1]:
            source = self.backend.describe().get("onnx_file") or self.weights_path or "the backend"
            raise EngineError(
                f"input {h}x{w} (padded to the model's multiple {self.input_multiple}) is larger than the "
                f"{size[0]}x{size[1]} the {self.backend.name} engine was built for ({source}); send images of "
                f"at most {size[0]}x{size[1]}, or rebuild it at the larger size (a new process, warm-up at that "
                "size, or a larger/dynamic ONNX file)")

    def warmup(self, height: int = 240, width: int = 320, iterations: int = 1) -> None:
        """Run dummy frames so the first real frame does not pay for allocation/autotuning.

        With a guidance provider other than ``fallback`` the dummy frames run the guided path with
        empty guidance of the stored text's shape, without asking the provider (a cache would count
        them as missing, an async worker would spend a generator run on a black frame).
        """
        rgb = np.zeros((height, width, 3), np.uint8)
        th = np.zeros((height, width), np.uint8)
        self._warming = self.uses_guidance and self.guidance.mode != "fallback"
        try:
            for _ in range(iterations):
                self.infer(rgb, th)
        finally:
            self._warming = False

    def release(self) -> None:
        """Free the backend, the model and cached GPU memory (lifecycle deactivate/cleanup)."""
        self.backend.release()
        self.guidance.close()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

