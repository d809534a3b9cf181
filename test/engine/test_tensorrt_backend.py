"""The TensorRT backend without TensorRT: key, cache hit/miss, rebuilds, progress and errors.

TensorRT cannot be installed here (no NVIDIA GPU), so every test but the missing-package one
injects :class:`FakeTensorRT` at the backend's one TensorRT seam (``runtime=``, the
:class:`~ivf_perception.engine.backends.tensorrt_backend.TensorRTRuntime` protocol). Everything
else is the real code: the ONNX file (a real one, written with ``onnx.helper``, or the real
cached export of the micro model), its input shapes, the key, the disk cache, the progress
thread and the error handling. The real TensorRT build and inference are checked by
``make gpu-check`` on a GPU machine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ivf_perception.engine.backends import BackendContext, BackendError, create_backend
from ivf_perception.engine.backends.tensorrt_backend import (
    BuildProgress,
    TensorRTBackend,
    TensorSpec,
    onnx_input_shapes,
)

onnx = pytest.importorskip("onnx", reason="the ONNX backends need the onnx package")

from ivf_perception.export.onnx import ONNX_FORMAT  # noqa: E402  (after the importorskip)

H, W = 16, 24


def write_onnx(path: Path, height: int | str = H, width: int | str = W, metadata: bool = True) -> Path:
    """A real, tiny ONNX file shaped like our exports: rgb, thermal -> fused (rgb + thermal)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["rgb", "thermal"], ["fused"])], "tiny",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, height, width]),
         helper.make_tensor_value_info("thermal", TensorProto.FLOAT, [1, 1, height, width])],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, [1, 3, height, width])],
    )
    model = helper.make_model(graph)
    if metadata:
        size = f"{height}x{width}" if isinstance(height, int) else "dynamic"
        for key, value in {"format": ONNX_FORMAT, "variant": "tiny", "preset": "test", "num_classes": "0",
                           "input_multiple": "8", "input_size": size}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


class FakeEngine:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeExecution:
    """Records what the backend binds and each enqueue (with the bindings at that moment)."""

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.runs: list[tuple[int, dict[str, int]]] = []

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.runs.append((stream_handle, dict(self.addresses)))
        return True


class FakeTensorRT:
    """Stands in for TensorRT at the backend's seam (TensorRT is not installable here).

    "Engines" are bytes that name the build's inputs, so a test can tell which build a cached
    file came from; ``deserialize`` refuses anything else, as TensorRT returns None for bytes it
    does not recognise.
    """

    version = "10.99.0-fake"

    def __init__(self, gpu: tuple[str, str] = ("Fake GPU 80GB", "9.0"), fail: Exception | None = None,
                 on_build: Any = None) -> None:
        self.gpu = gpu
        self.fail = fail
        self.on_build = on_build
        self.builds: list[tuple[Path, str, tuple]] = []
        self.deserialized = 0

    def target_gpu(self) -> tuple[str, str]:
        return self.gpu

    def build(self, onnx_path: Path, precision: str, shapes: Any, progress: BuildProgress) -> bytes:
        self.builds.append((onnx_path, precision, tuple(shapes)))
        if self.on_build is not None:
            self.on_build(progress)
        if self.fail is not None:
            raise self.fail
        return b"FAKE-ENGINE " + json.dumps({"precision": precision, "build": len(self.builds)}).encode()

    def deserialize(self, data: bytes) -> FakeEngine | None:
        self.deserialized += 1
        return FakeEngine(data) if data.startswith(b"FAKE-ENGINE ") else None

    def create_execution(self, engine: FakeEngine, shapes: Any) -> tuple[FakeExecution, list[TensorSpec]]:
        specs = [TensorSpec(name, True, shape, torch.float32) for name, shape in shapes]
        rgb = dict(shapes)["rgb"]
        return FakeExecution(), specs + [TensorSpec("fused", False, rgb, torch.float32)]


def backend(onnx_path: Path, cache: Path, runtime: FakeTensorRT, precision: str = "fp16",
            **options: Any) -> TensorRTBackend:
    context = BackendContext(model=None, device=torch.device("cuda"), precision=precision,  # type: ignore[arg-type]
                             weights_path=onnx_path, options={"cache_dir": str(cache), **options})
    return TensorRTBackend(context, runtime=runtime)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return write_onnx(tmp_path / "tiny.onnx")


def engine_files(cache: Path) -> list[Path]:
    return sorted((cache / "tensorrt").glob("*.engine"))


class TestKeyAndCache:
    def test_key_holds_version_gpu_capability_precision_shapes_and_onnx_hash(self, onnx_file: Path,
                                                                             tmp_path: Path) -> None:
        import hashlib

        b = backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        key = b.key
        assert (key.tensorrt, key.gpu, key.compute_capability, key.precision) == \
            ("10.99.0-fake", "Fake GPU 80GB", "9.0", "fp16")
        assert key.input_shapes == (("rgb", (1, 3, H, W)), ("thermal", (1, 1, H, W)))
        assert key.onnx_sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
        assert b.fixed_size == (H, W)
        assert b.describe()["engine"] == str(b.engine_path)

    def test_miss_builds_and_caches_then_hit_loads(self, onnx_file: Path, tmp_path: Path) -> None:
        first = FakeTensorRT()
        backend(onnx_file, tmp_path / "cache", first)
        assert len(first.builds) == 1
        assert first.builds[0][1:] == ("fp16", (("rgb", (1, 3, H, W)), ("thermal", (1, 1, H, W))))
        files = engine_files(tmp_path / "cache")
        assert len(files) == 1 and files[0].name.startswith("tiny-fp16-")
        second = FakeTensorRT()
        b = backend(onnx_file, tmp_path / "cache", second)
        assert second.builds == [] and second.deserialized == 1
        assert b.engine.data == files[0].read_bytes()

    @pytest.mark.parametrize("change", ["precision", "gpu", "onnx"])
    def test_a_different_key_builds_its_own_engine(self, onnx_file: Path, tmp_path: Path, change: str) -> None:
        backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        runtime = FakeTensorRT(gpu=("Other GPU", "8.6") if change == "gpu" else ("Fake GPU 80GB", "9.0"))
        if change == "onnx":
            onnx_file = write_onnx(onnx_file, height=32)
        backend(onnx_file, tmp_path / "cache", runtime, precision="bf16" if change == "precision" else "fp16")
        assert len(runtime.builds) == 1
        assert len(engine_files(tmp_path / "cache")) == 2

    def test_force_rebuild_ignores_a_good_cache(self, onnx_file: Path, tmp_path: Path) -> None:
        backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        runtime = FakeTensorRT()
        b = backend(onnx_file, tmp_path / "cache", runtime, force_rebuild=True)
        assert len(runtime.builds) == 1 and runtime.deserialized == 1
        assert b.engine.data == engine_files(tmp_path / "cache")[0].read_bytes()

    def test_dynamic_onnx_is_built_for_the_first_batch_size(self, tmp_path: Path) -> None:
        path = write_onnx(tmp_path / "dyn.onnx", height="height", width="width")
        assert onnx_input_shapes(path, (48, 64)) == (("rgb", (1, 3, 48, 64)), ("thermal", (1, 1, 48, 64)))
        assert onnx_input_shapes(path, None) == (("rgb", (1, 3, -1, -1)), ("thermal", (1, 1, -1, -1)))
        runtime = FakeTensorRT()
        b = backend(path, tmp_path / "cache", runtime)
        assert runtime.builds == [] and b.fixed_size is None and b.describe()["engine"] is None
        b._prepare((48, 64))  # what run() does first (run itself needs CUDA tensors)
        assert b.fixed_size == (48, 64)
        assert runtime.builds[0][2] == (("rgb", (1, 3, 48, 64)), ("thermal", (1, 1, 48, 64)))


class TestDamagedCache:
    def _warnings(self, caplog: pytest.LogCaptureFixture) -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    def test_truncated_engine_is_rebuilt_with_a_warning(self, onnx_file: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        path = engine_files(tmp_path / "cache")[0]
        path.write_bytes(path.read_bytes()[:10])
        runtime = FakeTensorRT()
        with caplog.at_level(logging.WARNING):
            b = backend(onnx_file, tmp_path / "cache", runtime)
        assert len(runtime.builds) == 1 and "truncated" in self._warnings(caplog)
        assert b.engine.data.startswith(b"FAKE-ENGINE ")
        assert backend(onnx_file, tmp_path / "cache", FakeTensorRT()).engine.data == path.read_bytes()  # repaired

    def test_foreign_engine_is_rebuilt_with_a_warning(self, onnx_file: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
        backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        sidecar = engine_files(tmp_path / "cache")[0].with_suffix(".json")
        meta = json.loads(sidecar.read_text())
        meta["key"]["compute_capability"] = "8.7"
        sidecar.write_text(json.dumps(meta))
        runtime = FakeTensorRT()
        with caplog.at_level(logging.WARNING):
            backend(onnx_file, tmp_path / "cache", runtime)
        assert len(runtime.builds) == 1
        assert "another configuration (differs in compute_capability)" in self._warnings(caplog)

    def test_engine_that_does_not_deserialize_is_rebuilt(self, onnx_file: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
        """Bytes that match their sidecar but that TensorRT refuses (deserialize returns None)."""
        probe = backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        probe.cache.store(probe.key, onnx_file.stem, b"not an engine at all")
        runtime = FakeTensorRT()
        with caplog.at_level(logging.WARNING):
            b = backend(onnx_file, tmp_path / "cache", runtime)
        assert len(runtime.builds) == 1 and runtime.deserialized == 2
        assert "does not deserialize" in self._warnings(caplog)
        assert b.engine.data.startswith(b"FAKE-ENGINE ")

    def test_deserialize_raising_is_treated_like_none(self, onnx_file: Path, tmp_path: Path) -> None:
        backend(onnx_file, tmp_path / "cache", FakeTensorRT())

        class Raising(FakeTensorRT):
            def deserialize(self, data: bytes) -> FakeEngine | None:
                if self.builds:
                    return super().deserialize(data)
                raise RuntimeError("std::exception in deserializeCudaEngine")

        runtime = Raising()
        assert backend(onnx_file, tmp_path / "cache", runtime).engine is not None
        assert len(runtime.builds) == 1

    def test_unwritable_cache_still_gives_an_engine(self, onnx_file: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
        blocker = tmp_path / "cache"
        blocker.mkdir()
        (blocker / "tensorrt").write_text("a file where the engine folder should be")
        with caplog.at_level(logging.WARNING):
            b = backend(onnx_file, blocker, FakeTensorRT())
        assert b.engine is not None and "could not cache the TensorRT engine" in self._warnings(caplog)


class TestBuildProgressAndErrors:
    def test_progress_lines_during_a_build(self, onnx_file: Path, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
        """The build blocks until the progress thread has logged twice (no timing asserted)."""
        def slow_build(progress: BuildProgress) -> None:
            progress.phase("Building engine / Tactic selection")
            deadline = time.monotonic() + 30
            while caplog.text.count("still building") < 2 and time.monotonic() < deadline:
                time.sleep(0.005)

        with caplog.at_level(logging.INFO, logger="ivf_perception.engine.backends.tensorrt_backend"):
            backend(onnx_file, tmp_path / "cache", FakeTensorRT(on_build=slow_build), progress_interval_s=0.01)
        lines = [r.getMessage() for r in caplog.records if "TensorRT engine for" in r.getMessage()]
        beats = [line for line in lines if "still building" in line]
        assert len(beats) >= 2
        assert all("tiny.onnx (fp16, Fake GPU 80GB)" in line and "phase: Building engine / Tactic selection" in line
                   for line in beats)
        assert lines[0].startswith("building the TensorRT engine") and lines[-1].startswith("built the TensorRT")
        count = len(beats)
        time.sleep(0.05)
        assert caplog.text.count("still building") == count  # the thread stopped with the build

    def test_build_failure_names_the_onnx_file_and_caches_nothing(self, onnx_file: Path, tmp_path: Path) -> None:
        runtime = FakeTensorRT(fail=RuntimeError("out of GPU memory during tactic selection"))
        with pytest.raises(BackendError, match=rf"could not build an engine from {onnx_file}.*out of GPU memory"):
            backend(onnx_file, tmp_path / "cache", runtime)
        assert engine_files(tmp_path / "cache") == []

    def test_missing_tensorrt_says_what_to_install(self, onnx_file: Path) -> None:
        """The real import of tensorrt (no stand-in): absent here, as on CI."""
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("tensorrt is installed here")
        context = BackendContext(model=None, device=torch.device("cuda"), precision="fp32",  # type: ignore[arg-type]
                                 weights_path=onnx_file)
        with pytest.raises(BackendError, match=r"pip install tensorrt.*NVIDIA GPU"):
            create_backend("tensorrt", context)

    @pytest.mark.parametrize("content", ["garbage", "no-metadata"])
    def test_onnx_weights_that_are_not_our_export(self, tmp_path: Path, content: str) -> None:
        path = tmp_path / "model.onnx"
        if content == "garbage":
            path.write_bytes(b"\x00\x01 definitely not protobuf")
        else:
            write_onnx(path, metadata=False)
        with pytest.raises(BackendError, match=rf"cannot build from {path}: {path}"):
            backend(path, tmp_path / "cache", FakeTensorRT())

    def test_unknown_precision(self, onnx_file: Path, tmp_path: Path) -> None:
        with pytest.raises(BackendError, match="unknown precision 'int8'"):
            backend(onnx_file, tmp_path / "cache", FakeTensorRT(), precision="int8")

    def test_run_binds_torch_tensors_on_the_current_stream(self, onnx_file: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """The binding logic of run(): CPU tensors stand in for CUDA ones, a stub for torch's
        current stream (the fake engine computes nothing, so only bindings and shapes are checked)."""
        class Stream:
            cuda_stream = 1234

        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        context = BackendContext(model=None, device=torch.device("cpu"), precision="fp32",  # type: ignore[arg-type]
                                 weights_path=onnx_file, options={"cache_dir": str(tmp_path)})
        b = TensorRTBackend(context, runtime=FakeTensorRT())
        rgb, thermal = torch.rand(2, 3, H, W), torch.rand(2, 1, H, W)
        out = b.run(rgb, thermal)  # a batch of 2 through the export's batch-1 engine: two enqueues
        runs = b.execution.runs
        assert [handle for handle, _ in runs] == [1234, 1234]
        assert runs[0][1]["rgb"] == rgb[0:1].data_ptr() and runs[1][1]["rgb"] == rgb[1:2].data_ptr()
        assert runs[0][1]["thermal"] == thermal[0:1].data_ptr()
        assert runs[0][1]["fused"] != runs[1][1]["fused"]  # each frame gets its own output buffer
        assert out.fused.shape == (2, 3, H, W) and out.fused.dtype == torch.float32 and out.logits is None

    def test_input_of_another_size_is_refused(self, onnx_file: Path, tmp_path: Path) -> None:
        b = backend(onnx_file, tmp_path / "cache", FakeTensorRT())
        with pytest.raises(BackendError, match=rf"takes {H}x{W} inputs, got 32x32"):
            b.run(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))


@pytest.mark.slow
class TestFromEngineWeights:
    """The real ONNX export (minutes on 2 CPU cores even for the micro model), then the fake build."""

    def test_exports_the_model_at_the_first_batch_size_once(self, tmp_path: Path, test_weights: Path) -> None:
        from ivf_perception.engine.weights import build_model_from_weights

        model = build_model_from_weights(test_weights)[0].eval()
        context = BackendContext(model=model, device=torch.device("cpu"), precision="fp32", weights_path=test_weights,
                                 options={"cache_dir": str(tmp_path)})
        runtime = FakeTensorRT()
        b = TensorRTBackend(context, runtime=runtime)
        assert b.onnx_path is None and runtime.builds == []  # nothing exported before a batch
        b._prepare((64, 96))  # what run() does first (run itself needs CUDA tensors)
        assert b.onnx_path is not None and b.onnx_path.parent == tmp_path / "onnx" and b.onnx_path.suffix == ".onnx"
        assert b.fixed_size == (64, 96) and len(runtime.builds) == 1 and runtime.builds[0][0] == b.onnx_path
        again = FakeTensorRT()
        TensorRTBackend(context, runtime=again)._prepare((64, 96))
        assert again.builds == [] and len(list((tmp_path / "onnx").glob("*.onnx"))) == 1


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_tensorrt(), reason="needs a CUDA device and TensorRT")
class TestRealTensorRT:
    """The real TensorRT build, cache and inference (``make gpu-check`` runs this on a GPU)."""

    @pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 3e-2)])
    def test_matches_torch_and_reloads_from_cache(self, tmp_path: Path, test_weights: Path, precision: str,
                                                  tol: float) -> None:
        from ivf_perception.engine.weights import build_model_from_weights

        model = build_model_from_weights(test_weights)[0].eval().cuda()
        rgb, thermal = torch.rand(2, 3, 64, 96, device="cuda"), torch.rand(2, 1, 64, 96, device="cuda")
        with torch.inference_mode():
            ref = model(rgb, thermal)
        context = BackendContext(model, torch.device("cuda"), precision, test_weights, {"cache_dir": str(tmp_path)})
        out = create_backend("tensorrt", context).run(rgb, thermal)  # batch 2 through a batch-1 engine
        torch.testing.assert_close(out.fused, ref.fused, atol=tol, rtol=tol)
        assert out.logits is not None and ref.logits is not None
        assert (out.logits.argmax(1) == ref.logits.argmax(1)).float().mean() >= 0.99
        assert len(engine_files(tmp_path)) == 1
        again = create_backend("tensorrt", context)
        torch.testing.assert_close(again.run(rgb, thermal).fused, out.fused, atol=0, rtol=0)
