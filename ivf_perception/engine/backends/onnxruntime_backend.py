"""ONNX Runtime backend: the exported graph in an ``onnxruntime.InferenceSession``.

Execution providers: the CPU provider always; on a CUDA device also the TensorRT and CUDA
providers when the installed onnxruntime has them (``onnxruntime-gpu``), in that order of
preference, so ONNX Runtime places every node on the fastest provider that supports it.
Inputs are copied to the host and outputs back to the Engine's device (no I/O binding: the copy
is small next to the network at camera sizes, and the same code then serves every provider).

Which file, which size:

* ``.onnx`` weights run as they are; a fixed-size file fixes :attr:`fixed_size` (the Engine pads
  smaller images to it and refuses larger ones), a dynamic one accepts any valid size.
* ordinary weights are exported through the ONNX cache (:func:`.onnx_file.onnx_file`). By
  default the file is **fixed to the first batch's padded size**, built on that first call (the
  node's warm-up at ``warmup_size`` builds it at configure). Why fixed rather than dynamic:
  S4Fusion's patch folding only exports with static shapes, a camera stream has one size, and
  fixed shapes let ONNX Runtime (and its TensorRT provider) plan memory and fuse once. Later
  batches are padded to that size; a larger one is an error that names the size and the file.
  ``options["dynamic"] = True`` asks for a dynamic export instead (an error for a model that
  cannot export one).

Precision: the exported graph is fp32. ``fp32`` runs everywhere; ``fp16`` needs the TensorRT
provider (which then builds fp16 kernels); ``bf16`` has no ONNX Runtime path here and is refused
at construction with the alternatives.

Options: ``threads`` (intra-op threads of the CPU provider; default torch's thread count, so
``--threads`` governs both), ``cache_dir`` and ``force_rebuild`` (the ONNX cache; ``cache_dir``
also holds the TensorRT provider's engine cache), ``dynamic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ivf_perception.engine.backends.base import BackendContext, BackendError, BackendOutput, InferenceBackend
from ivf_perception.engine.backends.onnx_file import is_onnx_file, onnx_file

__all__ = ["OnnxRuntimeBackend"]

_INSTALL = ("pip install onnxruntime (or onnxruntime-gpu for the CUDA and TensorRT providers; "
            "constraints in requirements/constraints.txt)")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(f"backend onnxruntime needs the onnxruntime package ({exc}); {_INSTALL}") from exc
    return onnxruntime


class OnnxRuntimeBackend(InferenceBackend):
    """Runs the ONNX file of the Engine's weights (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, context: BackendContext) -> None:
        self._ort = _import_onnxruntime()
        self.device = context.device
        self.precision = context.precision
        self._context = context
        self.providers = self._choose_providers()
        if self.precision == "bf16" or (self.precision == "fp16" and self.providers[0] != "TensorrtExecutionProvider"):
            needs = ("needs the TensorRT execution provider on CUDA" if self.precision == "fp16"
                     else "has no onnxruntime path here")
            raise BackendError(f"backend onnxruntime runs the exported fp32 graph; precision {self.precision} "
                               f"{needs}: use precision fp32, or backend compile or tensorrt")
        self._session: Any = None
        self._path: Path | None = None
        self._size: tuple[int, int] | None = None
        self._batch_one = True
        self._outputs: list[str] = []
        from_file = context.weights_path is not None and is_onnx_file(context.weights_path)
        self._dynamic = bool(context.options.get("dynamic")) and not from_file
        if from_file or self._dynamic:  # the size is known without a frame: build now, fail at construction
            self._build(onnx_file(context, None, None, dynamic=self._dynamic))

    # ------------------------------------------------------------------ building

    def _choose_providers(self) -> list[str]:
        available = set(self._ort.get_available_providers())
        wanted = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
        return [p for p in wanted if p in available]

    def _provider_options(self) -> list[dict[str, Any]]:
        index = self.device.index or 0
        options: list[dict[str, Any]] = []
        for provider in self.providers:
            if provider == "TensorrtExecutionProvider":
                cache = Path(self._context.options.get("cache_dir") or _default_cache_dir()) / "ort_tensorrt"
                cache.mkdir(parents=True, exist_ok=True)
                options.append({"device_id": index, "trt_fp16_enable": self.precision == "fp16",
                                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)})
            elif provider == "CUDAExecutionProvider":
                options.append({"device_id": index})
            else:
                options.append({})
        return options

    def _build(self, path: Path) -> None:
        ort = self._ort
        session_options = ort.SessionOptions()
        threads = self._context.options.get("threads")
        session_options.intra_op_num_threads = int(threads) if threads else torch.get_num_threads()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), session_options, providers=self.providers,
                                           provider_options=self._provider_options())
        except (RuntimeError, ValueError, OSError) as exc:  # onnxruntime's Fail/InvalidGraph are RuntimeErrors
            raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if set(inputs) != {"rgb", "thermal"} or not outputs or outputs[0] != "fused":
            raise BackendError(f"{path} is not a fusion graph (inputs {sorted(inputs)}, outputs {outputs}; expected "
                               "rgb and thermal in, fused and optionally logits out)")
        batch, _, height, width = inputs["rgb"]
        self._session, self._path, self._outputs = session, path, outputs
        self._size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self._batch_one = batch == 1

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return self._size

    # ------------------------------------------------------------------ inference

    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        if self._session is None:  # ordinary weights, fixed size: export at the first batch's size
            self._build(onnx_file(self._context, int(rgb.shape[-2]), int(rgb.shape[-1])))
        rgb_np = rgb.detach().float().cpu().numpy()
        thermal_np = thermal.detach().float().cpu().numpy()
        # our exports have batch size 1: run a batch item by item
        step = 1 if self._batch_one else rgb_np.shape[0]
        results = [self._session.run(self._outputs, {"rgb": rgb_np[i:i + step], "thermal": thermal_np[i:i + step]})
                   for i in range(0, rgb_np.shape[0], step)]
        merged = [np.concatenate([r[k] for r in results]) for k in range(len(self._outputs))]
        fused = torch.from_numpy(merged[0]).to(self.device)
        logits = torch.from_numpy(merged[1]).to(self.device) if len(merged) > 1 else None
        return BackendOutput(fused, logits)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "onnx_file": None if self._path is None else str(self._path),
                "providers": self._session.get_providers() if self._session is not None else self.providers}

    def release(self) -> None:
        self._session = None


def _default_cache_dir() -> Path:
    from ivf_perception.export.cache import default_cache_dir

    return default_cache_dir()
