"""The TensorRT backend: an engine built from the ONNX export, cached on disk, run on torch's stream.

How it gets its engine:

1. The ONNX file (:func:`~.onnx_file.onnx_file`, shared with the onnxruntime backend): the
   weights themselves when they are an ``.onnx`` export, else the cached fixed-size export of
   the model at the first batch's padded size. The engine's profile is that
   file's input shapes (a dynamic file's H×W set to the first batch's), so :attr:`fixed_size`
   is its H×W and the Engine pads smaller images to it.
2. The key (:class:`~.trt_cache.EngineKey`): TensorRT version, GPU, compute capability,
   precision, shapes, ONNX SHA-256. A cached engine with the same key is deserialized; a
   missing, foreign or damaged one, or ``options["force_rebuild"]``, means a build.
3. A build parses the ONNX file, sets the precision flags (fp16/bf16: TensorRT may pick those
   kernels where accurate; inputs and outputs stay float32), and logs a progress line every
   ``options["progress_interval_s"]`` seconds (default 5), with the build phase TensorRT
   reports through its progress monitor where it has one (TensorRT >= 10): builds take
   minutes and a silent node looks hung.

Every TensorRT call goes through one object, :class:`TensorRTRuntime` (the only place that
touches the ``tensorrt`` module); tests without a GPU inject a stand-in there and run
everything else for real.

Inference binds torch CUDA tensors directly (``set_tensor_address``) and enqueues on torch's
current stream (``execute_async_v3``), so no copies and no synchronisation are added.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ivf_perception.engine.backends.base import (
    PRECISIONS,
    BackendContext,
    BackendError,
    BackendOutput,
    InferenceBackend,
)
from ivf_perception.engine.backends.onnx_file import is_onnx_file, onnx_file
from ivf_perception.engine.backends.trt_cache import EngineCache, EngineKey, Shapes

__all__ = ["BuildProgress", "TensorRTBackend", "TensorRTRuntime", "TensorSpec",
           "load_tensorrt", "onnx_input_shapes"]

_INSTALL = ("`pip install tensorrt` (it needs an NVIDIA GPU with a CUDA driver; "
            "on a machine without one use backend onnxruntime)")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a built engine."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorRTRuntime(Protocol):
    """The TensorRT calls the backend makes (real: :func:`load_tensorrt`; tests: a stand-in)."""

    version: str

    def target_gpu(self) -> tuple[str, str]:
        """(GPU name, ``major.minor`` compute capability) the engine is built for."""

    def build(self, onnx_path: Path, precision: str, shapes: Shapes,
              progress: BuildProgress) -> bytes:
        """A serialized engine, or :class:`BackendError` naming ``onnx_path``."""

    def deserialize(self, data: bytes) -> Any | None:
        """The engine, or None when TensorRT refuses the bytes."""

    def create_execution(self, engine: Any, shapes: Shapes) -> tuple[Any, list[TensorSpec]]:
        """An execution context with the inputs set to ``shapes`` (needed where the engine is
        dynamic), and every input and output with its resolved shape, in the engine's order."""


class BuildProgress:
    """Logs "still building" every ``interval_s`` seconds from a thread while a build runs.

    The builder reports its phases through :meth:`phase` (TensorRT's progress monitor), so the
    line says what is being done, not only that something is.
    """

    def __init__(self, what: str, interval_s: float = 5.0, log: logging.Logger = _log) -> None:
        self.what, self.interval_s, self._log = what, interval_s, log
        self._phase = ""
        self._stop = threading.Event()
        self._start = 0.0

    def phase(self, name: str) -> None:
        """Record the build phase TensorRT has started (thread-safe: a str assignment)."""
        self._phase = name

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            phase = f", phase: {self._phase}" if self._phase else ""
            self._log.info("still building the TensorRT engine for %s: %.0f s%s",
                           self.what, time.monotonic() - self._start, phase)

    @contextmanager
    def running(self) -> Iterator[BuildProgress]:
        """Log the start, beat while inside, log the duration on success."""
        self._start = time.monotonic()
        self._stop.clear()
        self._log.info("building the TensorRT engine for %s (this takes minutes; cached afterwards)", self.what)
        thread = threading.Thread(target=self._beat, name="tensorrt-build-progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
        self._log.info("built the TensorRT engine for %s in %.0f s", self.what, time.monotonic() - self._start)


class _RealTensorRT:
    """:class:`TensorRTRuntime` over the ``tensorrt`` module, for the current CUDA device."""

    def __init__(self, trt: Any, device: torch.device) -> None:
        self.trt = trt
        self.device = device
        self.version = str(trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: engines must not outlive their runtime

    def target_gpu(self) -> tuple[str, str]:
        major, minor = torch.cuda.get_device_capability(self.device)
        return torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    def _parse(self, onnx_path: Path) -> tuple[Any, Any]:
        trt = self.trt
        builder = trt.Builder(self.logger)
        # TensorRT 10 networks are always explicit-batch; 8.x needs the flag
        explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
        flags = 0 if int(self.version.split(".")[0]) >= 10 or explicit is None else 1 << int(explicit)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT {self.version} cannot parse the ONNX file {onnx_path}: {errors}")
        return builder, network

    def build(self, onnx_path: Path, precision: str, shapes: Shapes,
              progress: BuildProgress) -> bytes:
        with torch.cuda.device(self.device):  # TensorRT builds for the current CUDA device
            return self._build(onnx_path, precision, shapes, progress)

    def _build(self, onnx_path: Path, precision: str, shapes: Shapes, progress: BuildProgress) -> bytes:
        trt = self.trt
        builder, network = self._parse(onnx_path)
        config = builder.create_builder_config()
        if precision != "fp32":
            flag = getattr(trt.BuilderFlag, precision.upper(), None)
            if flag is None:
                raise BackendError(f"TensorRT {self.version} has no {precision} builder flag; "
                                   f"use precision fp32 or fp16 (building from {onnx_path})")
            config.set_flag(flag)
        if any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs)):
            profile = builder.create_optimization_profile()
            for name, shape in shapes:
                profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = _progress_monitor(trt, progress)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT {self.version} could not build an engine from {onnx_path} "
                               f"({precision}); its log above says why")
        return bytes(serialized)

    def deserialize(self, data: bytes) -> Any | None:
        with torch.cuda.device(self.device):
            return self.runtime.deserialize_cuda_engine(data)

    def create_execution(self, engine: Any, shapes: Shapes) -> tuple[Any, list[TensorSpec]]:
        trt = self.trt
        with torch.cuda.device(self.device):
            execution = engine.create_execution_context()
        for name, shape in shapes:
            if -1 in tuple(engine.get_tensor_shape(name)):
                execution.set_input_shape(name, shape)
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        if hasattr(trt, "bfloat16"):  # TensorRT >= 9
            dtypes[trt.bfloat16] = torch.bfloat16
        specs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            specs.append(TensorSpec(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                    tuple(execution.get_tensor_shape(name)), dtypes[engine.get_tensor_dtype(name)]))
        return execution, specs


def _progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A ``trt.IProgressMonitor`` forwarding phase starts to ``progress`` (never cancels)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase(phase_name if not parent_phase else f"{parent_phase} / {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Monitor()


def onnx_input_shapes(onnx_path: Path, size: tuple[int, int] | None) -> Shapes:
    """The ONNX graph's input shapes, the engine profile: a dynamic batch becomes 1 and dynamic
    H, W (the last two dimensions) become ``size`` (stay -1 when it is None). Read with ``onnx``
    without the weights."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    filled = []
    for graph_input in proto.graph.input:
        if graph_input.name in initializers:  # old exporters list weights as inputs too
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_input.type.tensor_type.shape.dim]
        if dims and dims[0] < 0:
            dims[0] = 1
        if size is not None and len(dims) >= 2:
            dims[-2] = size[0] if dims[-2] < 0 else dims[-2]
            dims[-1] = size[1] if dims[-1] < 0 else dims[-1]
        filled.append((graph_input.name, tuple(dims)))
    return tuple(filled)


def load_tensorrt(device: torch.device) -> TensorRTRuntime:
    """The real runtime, or a :class:`BackendError` saying what to install or which device to use."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"backend 'tensorrt' needs the TensorRT Python package ({exc}); {_INSTALL}") from exc
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendError(f"backend 'tensorrt' runs on an NVIDIA GPU, but the engine device is {device}"
                           f"{'' if torch.cuda.is_available() else ' (no CUDA device here)'}; "
                           "use device cuda, or backend onnxruntime on a CPU")
    return _RealTensorRT(trt, device)


def _read_shapes(onnx_path: Path, size: tuple[int, int] | None) -> Shapes:
    try:
        return onnx_input_shapes(onnx_path, size)
    except ImportError as exc:
        raise BackendError(f"backend 'tensorrt' reads {onnx_path} with the onnx package ({exc}); "
                           "`pip install onnx`") from exc


class TensorRTBackend(InferenceBackend):
    """A TensorRT engine built from the ONNX export (see the module docstring).

    When the engine is made: at construction for fixed-size ``.onnx`` weights; otherwise at the
    first batch, for its padded size (the node's warm-up at configure does this), exactly as
    the onnxruntime backend fixes its export. Later batches must have that size (the Engine pads
    smaller images to :attr:`fixed_size`).

    Options (``BackendContext.options``): ``cache_dir`` (default: the package cache folder),
    ``force_rebuild`` (export the ONNX file again and ignore a cached engine),
    ``progress_interval_s`` (seconds between build progress lines, default 5).

    Args:
        context: as every backend gets it.
        runtime: the TensorRT calls; None loads TensorRT (tests pass a stand-in).

    Raises:
        BackendError: TensorRT missing (says ``pip install tensorrt``), a non-CUDA device, no
            usable ONNX file, or a failed build (naming the ONNX file).
    """

    name = "tensorrt"

    def __init__(self, context: BackendContext, runtime: TensorRTRuntime | None = None) -> None:
        if context.precision not in PRECISIONS:
            raise BackendError(f"unknown precision {context.precision!r}; use one of {', '.join(PRECISIONS)}")
        self.runtime = runtime if runtime is not None else load_tensorrt(context.device)
        self.context = context
        self.device = context.device
        self.precision = context.precision
        options = context.options
        from ivf_perception.export.cache import default_cache_dir

        self.cache_dir = Path(options["cache_dir"]) if options.get("cache_dir") else default_cache_dir()
        self.cache = EngineCache(self.cache_dir / "tensorrt")
        self.force_rebuild = bool(options.get("force_rebuild", False))
        self.progress_interval_s = float(options.get("progress_interval_s", 5.0))
        self.onnx_path: Path | None = None
        self.engine: Any = None
        self.execution: Any = None
        self._size: tuple[int, int] | None = None
        weights = context.weights_path
        if weights is not None and is_onnx_file(weights):
            from ivf_perception.export.onnx import OnnxExportError, read_onnx_metadata

            try:
                read_onnx_metadata(weights)  # one of our exports, readable: else a clear error now
            except OnnxExportError as exc:
                raise BackendError(f"backend 'tensorrt' cannot build from {weights}: {exc}") from exc
            self.onnx_path = Path(weights)
            shapes = _read_shapes(self.onnx_path, None)
            if not any(-1 in shape for _, shape in shapes):
                rgb = dict(shapes).get("rgb", shapes[0][1])
                self._prepare((int(rgb[-2]), int(rgb[-1])))

    def _prepare(self, size: tuple[int, int]) -> None:
        """Make the engine for inputs of ``size``: the ONNX file, the key, a cached or new engine,
        an execution context."""
        from ivf_perception.export.onnx import file_sha256

        onnx_path = self.onnx_path if self.onnx_path is not None else onnx_file(self.context, *size)
        shapes = _read_shapes(onnx_path, size)
        gpu, capability = self.runtime.target_gpu()
        self.onnx_path = onnx_path
        self.key = EngineKey(self.runtime.version, gpu, capability, self.precision, shapes, file_sha256(onnx_path))
        self.engine_path = self.cache.engine_path(self.key, onnx_path.stem)
        self.engine = self._load_or_build(onnx_path)
        self.execution, specs = self.runtime.create_execution(self.engine, self.key.input_shapes)
        self.inputs = [s for s in specs if s.is_input]
        self.outputs = [s for s in specs if not s.is_input]
        names = {s.name for s in specs}
        if not {"rgb", "thermal", "fused"} <= names:
            raise BackendError(f"the engine built from {onnx_path} has tensors {sorted(names)}; "
                               "expected inputs rgb, thermal and output fused (an ivf_perception ONNX export)")
        rgb_shape = next(s for s in self.inputs if s.name == "rgb").shape
        self._size = (int(rgb_shape[-2]), int(rgb_shape[-1]))

    def _load_or_build(self, onnx_path: Path) -> Any:
        stem = onnx_path.stem
        if self.force_rebuild:
            _log.info("force_rebuild: ignoring any cached TensorRT engine for %s", onnx_path)
        else:
            data = self.cache.load(self.key, stem)
            if data is not None:
                engine = self._deserialize(data)
                if engine is not None:
                    return engine
                _log.warning("cached TensorRT engine %s does not deserialize with TensorRT %s; rebuilding it",
                             self.engine_path, self.key.tensorrt)
        progress = BuildProgress(f"{onnx_path.name} ({self.precision}, {self.key.gpu})", self.progress_interval_s)
        with progress.running():
            try:
                data = self.runtime.build(onnx_path, self.precision, self.key.input_shapes, progress)
            except BackendError:
                raise
            except Exception as exc:  # TensorRT raises assorted types; the message names the file
                raise BackendError(f"TensorRT could not build an engine from {onnx_path} "
                                   f"({self.precision}): {type(exc).__name__}: {exc}") from exc
        engine = self._deserialize(data)
        if engine is None:
            raise BackendError(f"TensorRT built an engine from {onnx_path} but cannot load it back")
        self.cache.store(self.key, stem, data)
        return engine

    def _deserialize(self, data: bytes) -> Any | None:
        try:
            return self.runtime.deserialize(data)
        except Exception as exc:  # a damaged engine may raise instead of returning None
            _log.warning("TensorRT refused the engine bytes: %s: %s", type(exc).__name__, exc)
            return None

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return self._size

    def run(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        if self.engine is None:  # size open until now: make the engine for this batch's size
            self._prepare((int(rgb.shape[-2]), int(rgb.shape[-1])))
        assert self._size is not None  # set by _prepare
        height, width = self._size
        if tuple(rgb.shape[-2:]) != (height, width):
            raise BackendError(f"the TensorRT engine from {self.onnx_path} takes {height}x{width} inputs, "
                               f"got {rgb.shape[-2]}x{rgb.shape[-1]}")
        batch = next(s for s in self.inputs if s.name == "rgb").shape[0]
        if rgb.shape[0] == batch:
            return self._execute(rgb, thermal)
        # an engine of batch 1 (the export's) runs a larger batch one frame at a time
        parts = [self._execute(rgb[i:i + 1], thermal[i:i + 1]) for i in range(rgb.shape[0])]
        logits = [p.logits for p in parts]
        return BackendOutput(torch.cat([p.fused for p in parts]),
                             None if logits[0] is None else torch.cat([t for t in logits if t is not None]))

    def _execute(self, rgb: torch.Tensor, thermal: torch.Tensor) -> BackendOutput:
        feeds = {"rgb": rgb, "thermal": thermal}
        # The converted inputs stay referenced until the work is enqueued: freed earlier, the
        # caching allocator could hand their memory to the outputs below. Afterwards, frees are
        # ordered on this stream, so nothing else must wait.
        keep = []
        for spec in self.inputs:
            tensor = feeds[spec.name].to(device=self.device, dtype=spec.dtype).contiguous()
            keep.append(tensor)
            self.execution.set_tensor_address(spec.name, tensor.data_ptr())
        results = {}
        for spec in self.outputs:
            out = torch.empty(spec.shape, dtype=spec.dtype, device=self.device)
            results[spec.name] = out
            self.execution.set_tensor_address(spec.name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.execution.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run the engine {self.engine_path}")
        logits = results.get("logits")
        return BackendOutput(results["fused"].float(), None if logits is None else logits.float())

    def describe(self) -> dict[str, Any]:
        built = self.engine is not None
        return {**super().describe(), "precision": self.precision, "tensorrt": self.runtime.version,
                "onnx": None if self.onnx_path is None else str(self.onnx_path),
                "engine": str(self.engine_path) if built else None, "gpu": self.key.gpu if built else None}

    def release(self) -> None:
        """Drop the execution context and engine (their GPU memory) before the runtime."""
        self.execution = None
        self.engine = None
