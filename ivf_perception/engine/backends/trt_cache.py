"""The on-disk cache of serialized TensorRT engines, and the key that says when one may be reused.

Why: building an engine takes minutes (TensorRT times every candidate kernel), while loading a
serialized one takes a second, so a node restart must find the engine it built last time. A
serialized engine is only valid for the TensorRT version that wrote it and the GPU model it was
tuned on, and it encodes the network, the precision and the input shapes. The key holds exactly
these: TensorRT version, GPU name, compute capability, precision, input shape profile and the
SHA-256 of the ONNX file (which covers weights, variant and size).

Layout: ``<folder>/<onnx stem>-<precision>-<key digest[:16]>.engine`` and beside it a ``.json``
sidecar with the full key and the engine's length and SHA-256. A file is reused only when the
sidecar holds the same key and the engine bytes match it, so a truncated write, a file copied
from another machine or any other damage reads as a miss with a warning (the caller rebuilds),
never as an engine that crashes at deserialisation. Files are written to a temporary name and
renamed; the sidecar is written last, so it always describes a complete engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FORMAT", "EngineCache", "EngineKey", "Shapes"]

Shapes = tuple[tuple[str, tuple[int, ...]], ...]
"""((input name, shape), ...) in the network's order: an engine's input shape profile."""

CACHE_FORMAT = "ivf_perception.tensorrt-engine/1"
"""Written into every sidecar; a different value (a future layout) reads as a miss."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineKey:
    """What a serialized engine depends on; equal keys mean the engine can be reused.

    Attributes:
        tensorrt: TensorRT version (engines do not load across versions).
        gpu: GPU name as the CUDA driver reports it (tactics are tuned per model).
        compute_capability: ``major.minor`` (the kernels' instruction set).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        input_shapes: ``((input name, shape), ...)`` in the network's order: the profile.
        onnx_sha256: SHA-256 of the ONNX file the engine was built from.
    """

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    input_shapes: Shapes
    onnx_sha256: str

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form (shapes as lists), as stored in the sidecar."""
        data = asdict(self)
        data["input_shapes"] = [[name, list(shape)] for name, shape in self.input_shapes]
        return data

    def digest(self) -> str:
        """Hex SHA-256 of the canonical JSON form."""
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Serialized engines under one folder (created on the first store).

    Args:
        folder: where engines and sidecars live (``<cache dir>/tensorrt`` by default).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def engine_path(self, key: EngineKey, stem: str) -> Path:
        """Where the engine of ``key`` built from the ONNX file named ``stem`` lives."""
        return self.folder / f"{stem}-{key.precision}-{key.digest()[:16]}.engine"

    @staticmethod
    def sidecar_path(engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def load(self, key: EngineKey, stem: str) -> bytes | None:
        """The cached engine bytes for ``key``, or None on a miss.

        A missing engine is a plain miss (logged at INFO). An engine without a readable
        sidecar, with another key (a foreign file), from another cache format, or whose
        bytes do not match the recorded length and hash (truncated or damaged) is a miss
        with a WARNING that names the file and the problem.
        """
        path = self.engine_path(key, stem)
        if not path.is_file():
            _log.info("no cached TensorRT engine at %s", path)
            return None
        meta, problem = self._read_sidecar(path, key)
        if problem is None:
            try:
                data = path.read_bytes()
            except OSError as exc:
                problem = f"cannot be read ({exc})"
            else:
                problem = _content_problem(data, meta)
                if problem is None:
                    _log.info("using cached TensorRT engine %s", path)
                    return data
        _log.warning("cached TensorRT engine %s is unusable (%s); rebuilding it", path, problem)
        return None

    def _read_sidecar(self, path: Path, key: EngineKey) -> tuple[dict[str, Any], str | None]:
        """The sidecar, and why it does not vouch for ``key`` (None when it does)."""
        sidecar = self.sidecar_path(path)
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError) as exc:
            return {}, f"its sidecar {sidecar.name} is missing or not JSON ({type(exc).__name__})"
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            return {}, f"its sidecar {sidecar.name} is not a {CACHE_FORMAT} record"
        if meta.get("key") != key.as_json():
            return meta, f"it was built for another configuration ({_key_difference(meta.get('key'), key)})"
        return meta, None

    def store(self, key: EngineKey, stem: str, data: bytes) -> Path | None:
        """Save ``data`` as the engine of ``key``; returns its path, or None (with a warning)
        when the folder is not writable: the caller keeps the engine in memory either way."""
        path = self.engine_path(key, stem)
        sidecar = {"format": CACHE_FORMAT, "key": key.as_json(), "engine_bytes": len(data),
                   "engine_sha256": _sha256(data)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
            _write_atomic(self.sidecar_path(path), json.dumps(sidecar, indent=2).encode())
        except OSError as exc:
            _log.warning("could not cache the TensorRT engine at %s (%s); it will be rebuilt next time", path, exc)
            return None
        _log.info("cached TensorRT engine at %s (%.1f MB)", path, len(data) / 1e6)
        return path


def _content_problem(data: bytes, meta: dict[str, Any]) -> str | None:
    """Why the engine bytes do not match their sidecar record, or None when they do."""
    if len(data) != meta.get("engine_bytes"):
        return f"{len(data)} bytes where {meta.get('engine_bytes')} were written (truncated?)"
    if _sha256(data) != meta.get("engine_sha256"):
        return "its bytes do not match the recorded SHA-256 (damaged)"
    return None


def _key_difference(stored: object, key: EngineKey) -> str:
    """Which key fields differ, for the warning (a stored key of the wrong shape: all)."""
    wanted = key.as_json()
    if not isinstance(stored, dict):
        return "no key recorded"
    fields = [name for name, value in wanted.items() if stored.get(name) != value]
    return "differs in " + ", ".join(fields) if fields else "same fields, other layout"
