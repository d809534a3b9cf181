"""The TensorRT engine cache: the key, hits and misses, and damaged or foreign files.

No TensorRT needed: the cache stores and checks bytes; what the bytes are is TensorRT's
business (see test_tensorrt_backend.py for the backend on top of it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from ivf_perception.engine.backends.trt_cache import CACHE_FORMAT, EngineCache, EngineKey

KEY = EngineKey(tensorrt="10.3.0", gpu="NVIDIA H200", compute_capability="9.0", precision="fp16",
                input_shapes=(("rgb", (1, 3, 480, 640)), ("thermal", (1, 1, 480, 640))), onnx_sha256="ab" * 32)
ENGINE = bytes(range(256)) * 40


class TestEngineKey:
    def test_equal_keys_share_a_digest(self) -> None:
        assert dataclasses.replace(KEY).digest() == KEY.digest()
        assert len(KEY.digest()) == 64

    @pytest.mark.parametrize("field, value", [
        ("tensorrt", "10.4.0"), ("gpu", "NVIDIA L4"), ("compute_capability", "8.9"), ("precision", "bf16"),
        ("input_shapes", (("rgb", (1, 3, 240, 320)), ("thermal", (1, 1, 240, 320)))), ("onnx_sha256", "cd" * 32),
    ])
    def test_every_field_changes_the_digest_and_the_file(self, tmp_path: Path, field: str, value: object) -> None:
        other = dataclasses.replace(KEY, **{field: value})
        assert other.digest() != KEY.digest()
        cache = EngineCache(tmp_path)
        assert cache.engine_path(other, "model") != cache.engine_path(KEY, "model")

    def test_json_form_is_plain(self) -> None:
        data = KEY.as_json()
        assert json.loads(json.dumps(data)) == data
        assert data["input_shapes"] == [["rgb", [1, 3, 480, 640]], ["thermal", [1, 1, 480, 640]]]


class TestEngineCache:
    def test_miss_store_hit(self, tmp_path: Path) -> None:
        cache = EngineCache(tmp_path / "tensorrt")
        assert cache.load(KEY, "s4fusion-paper") is None
        path = cache.store(KEY, "s4fusion-paper", ENGINE)
        assert path == cache.engine_path(KEY, "s4fusion-paper")
        assert path is not None and path.name.startswith("s4fusion-paper-fp16-") and path.suffix == ".engine"
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["format"] == CACHE_FORMAT and sidecar["key"] == KEY.as_json()
        assert sidecar["engine_bytes"] == len(ENGINE)
        assert cache.load(KEY, "s4fusion-paper") == ENGINE
        assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".json").name])

    def _stored(self, tmp_path: Path) -> tuple[EngineCache, Path]:
        cache = EngineCache(tmp_path)
        path = cache.store(KEY, "m", ENGINE)
        assert path is not None
        return cache, path

    def _assert_rejected(self, cache: EngineCache, caplog: pytest.LogCaptureFixture, reason: str) -> None:
        with caplog.at_level(logging.WARNING):
            assert cache.load(KEY, "m") is None
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "rebuilding it" in warnings[0] and reason in warnings[0], warnings

    def test_truncated_engine(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        cache, path = self._stored(tmp_path)
        path.write_bytes(ENGINE[:1000])
        self._assert_rejected(cache, caplog, f"1000 bytes where {len(ENGINE)} were written")

    def test_damaged_engine_of_the_right_length(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        cache, path = self._stored(tmp_path)
        path.write_bytes(b"\0" * len(ENGINE))
        self._assert_rejected(cache, caplog, "do not match the recorded SHA-256")

    def test_foreign_engine(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """An engine whose sidecar names another GPU and TensorRT (copied from another machine)."""
        cache, path = self._stored(tmp_path)
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text())
        meta["key"].update(gpu="NVIDIA Jetson Orin", tensorrt="8.6.2")
        sidecar.write_text(json.dumps(meta))
        self._assert_rejected(cache, caplog, "built for another configuration (differs in tensorrt, gpu)")

    @pytest.mark.parametrize("sidecar_text", [None, "{not json", '{"format": "other/1"}', "[1, 2]"])
    def test_missing_or_bad_sidecar(self, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    sidecar_text: str | None) -> None:
        cache, path = self._stored(tmp_path)
        sidecar = path.with_suffix(".json")
        if sidecar_text is None:
            sidecar.unlink()
        else:
            sidecar.write_text(sidecar_text)
        self._assert_rejected(cache, caplog, f"its sidecar {sidecar.name}")

    def test_store_overwrites_a_rejected_file(self, tmp_path: Path) -> None:
        cache, path = self._stored(tmp_path)
        path.write_bytes(b"junk")
        assert cache.load(KEY, "m") is None
        cache.store(KEY, "m", ENGINE[::-1])
        assert cache.load(KEY, "m") == ENGINE[::-1]

    def test_unwritable_folder_warns_and_returns_none(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("a file where the cache folder should be")
        with caplog.at_level(logging.WARNING):
            assert EngineCache(blocker / "tensorrt").store(KEY, "m", ENGINE) is None
        assert "could not cache the TensorRT engine" in caplog.text
