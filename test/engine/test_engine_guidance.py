"""The Engine's guidance providers: fallback, cache (exact pair lookup, padding, missing entries)
and async (worker, age limit, failing functions), and the errors for impossible combinations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine, EngineError
from ivf_perception.engine.config import PipelineConfig
from ivf_perception.engine.guidance import (
    AsyncGuidanceProvider,
    CacheGuidanceProvider,
    GuidanceProviderError,
    create_guidance_provider,
    load_guidance_function,
)
from ivf_perception.guidance import Guidance, GuidanceCache

SETTINGS = {"generator": "test"}


def _pair(h: int = 20, w: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8)


def _engine(**kwargs) -> Engine:
    torch.manual_seed(0)
    engine = Engine("test_tesg", device="cpu", num_classes=3, **kwargs)
    engine.model.set_fallback_text(torch.randn_like(engine.model.fallback_text))
    return engine


def _capture(engine: Engine) -> list[dict]:
    """The guidance each forward of the engine's model received."""
    seen: list[dict] = []
    engine.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    return seen


def test_fallback_is_the_default_and_other_models_report_none() -> None:
    engine = _engine()
    result = engine.infer(*_pair())
    assert result.guidance.source == "fallback" and not result.guidance.guided
    assert "guidance_mode" in engine.describe()
    other = Engine("test_s4fusion", device="cpu").infer(*_pair())
    assert other.guidance.source == "none"


def test_cache_provider_feeds_the_exact_pair_padded_like_the_images(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    mask = torch.zeros(20, 30)
    mask[5:12, 3:20] = 1.0
    tokens = torch.randn(5, 16)
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=mask, text_tokens=tokens)
    engine = _engine(guidance=CacheGuidanceProvider(tmp_path))
    seen = _capture(engine)
    result = engine.infer(rgb, thermal)
    assert result.guidance.source == "cache" and result.guidance.age_s == 0.0 and result.guidance.guided
    g = seen[-1]["guidance"]
    assert g.mask.shape == (1, 1, 24, 32)                       # padded to the multiple of 8
    assert torch.equal(g.mask[0, 0, :20, :30], mask) and g.mask[..., 20:, :].sum() == 0 and g.mask[..., 30:].sum() == 0
    torch.testing.assert_close(g.text_tokens[0], tokens.half().float())
    fallback = _engine().infer(rgb, thermal)
    assert not np.array_equal(result.fused, fallback.fused)    # the guidance changed the output


def test_cache_provider_reports_a_missing_pair_and_strict_refuses_it(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=torch.zeros(20, 30), text_tokens=torch.zeros(5, 16))
    provider = CacheGuidanceProvider(tmp_path)
    engine = _engine(guidance=provider)
    other = _pair(seed=1)
    result = engine.infer(*other)
    assert result.guidance.source == "fallback" and result.guidance.reason == "not cached"
    assert provider.missing == 1 and engine.describe()["guidance_missing"] == 1
    torch.manual_seed(0)
    strict = _engine(guidance=CacheGuidanceProvider(tmp_path, strict=True))
    with pytest.raises(GuidanceProviderError, match="no guidance for image pair"):
        strict.infer(*other)


def test_a_batch_with_and_without_guidance_runs_the_fallback(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=torch.ones(20, 30), text_tokens=torch.zeros(5, 16))
    engine = _engine(guidance=CacheGuidanceProvider(tmp_path))
    other = _pair(seed=2)
    results = engine.infer_batch([rgb, other[0]], [thermal, other[1]])
    assert [r.guidance.source for r in results] == ["fallback", "fallback"]
    assert "mixes frames" in results[0].guidance.reason


def test_guidance_needs_a_guided_model_on_the_torch_backend(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=torch.ones(20, 30), text_tokens=torch.zeros(5, 16))
    with pytest.raises(EngineError, match="s4fusion takes no guidance; use guidance_mode fallback"):
        Engine("test_s4fusion", device="cpu", guidance=CacheGuidanceProvider(tmp_path))
    with pytest.raises(GuidanceProviderError, match="not a guidance cache"):
        CacheGuidanceProvider(tmp_path / "absent")


def _constant_guidance(calls: list[float]):
    def function(rgb: np.ndarray, thermal: np.ndarray) -> Guidance:
        calls.append(float(rgb.mean()))
        return Guidance(mask=torch.ones(1, 1, *rgb.shape[:2]), text_tokens=torch.ones(1, 4, 16), source="sig")
    return function


def test_async_provider_uses_young_guidance_and_falls_back_on_old() -> None:
    calls: list[float] = []
    provider = AsyncGuidanceProvider(_constant_guidance(calls), max_age_s=1.0)
    engine = _engine(guidance=provider)
    rgb, thermal = _pair()
    try:
        first = engine.infer(rgb, thermal, stamp_s=10.0)
        assert first.guidance.source == "fallback" and first.guidance.reason == "no guidance computed yet"
        assert provider.wait_idle()
        young = engine.infer(rgb, thermal, stamp_s=10.5)
        assert young.guidance.source == "async" and young.guidance.age_s == pytest.approx(0.5)
        assert provider.wait_idle()                             # now computed for the frame at 10.5
        old = engine.infer(rgb, thermal, stamp_s=12.0)
        assert old.guidance.source == "fallback" and "1.500 s old" in old.guidance.reason
        assert provider.computed >= 2 and len(calls) >= 2 and provider.errors == 0
    finally:
        engine.release()
    assert provider._thread is not None and not provider._thread.is_alive()


def test_async_provider_survives_a_failing_or_wrong_function() -> None:
    def wrong_size(rgb: np.ndarray, thermal: np.ndarray) -> Guidance:
        return Guidance(mask=torch.ones(1, 1, 2, 2), text_tokens=torch.ones(1, 4, 16))

    def broken(rgb: np.ndarray, thermal: np.ndarray) -> Guidance:
        raise RuntimeError("GPU out of memory")

    for function, message in ((wrong_size, "for a 20x30 image"), (broken, "GPU out of memory")):
        provider = AsyncGuidanceProvider(function, max_age_s=1.0)
        rgb, thermal = _pair()
        try:
            provider.guidance_for(rgb, thermal, 1.0)
            assert provider.wait_idle()
            guidance, status = provider.guidance_for(rgb, thermal, 1.1)
            assert guidance is None and status.source == "fallback"
            assert provider.errors >= 1 and message in provider.last_error
        finally:
            provider.close()


def test_provider_factory_and_function_specs() -> None:
    assert create_guidance_provider("fallback").mode == "fallback"
    with pytest.raises(GuidanceProviderError, match="needs guidance_cache"):
        create_guidance_provider("cache")
    with pytest.raises(GuidanceProviderError, match="needs guidance_function"):
        create_guidance_provider("async")
    with pytest.raises(GuidanceProviderError, match="must be one of"):
        create_guidance_provider("sig")
    with pytest.raises(GuidanceProviderError, match="'package.module:factory'"):
        load_guidance_function("no_colon")
    with pytest.raises(GuidanceProviderError, match="cannot be loaded"):
        load_guidance_function("ivf_perception.guidance:absent")
    with pytest.raises(GuidanceProviderError, match="must return a callable"):
        load_guidance_function("ivf_perception.guidance:CACHE_FORMAT")
    with pytest.raises(GuidanceProviderError, match="max_age"):
        AsyncGuidanceProvider(lambda r, t: None, max_age_s=-1)  # type: ignore[arg-type,return-value]


def test_from_config_builds_the_configured_provider(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=torch.ones(20, 30), text_tokens=torch.zeros(6, 16))
    config = PipelineConfig.from_values({"variant": "test_tesg", "weights": "none", "device": "cpu",
                                         "guidance_mode": "cache", "guidance_cache": str(tmp_path)})
    engine = Engine.from_config(config)
    assert engine.guidance.mode == "cache" and engine.infer(rgb, thermal).guidance.source == "cache"


def test_warmup_runs_the_guided_path_without_asking_the_provider(tmp_path: Path) -> None:
    GuidanceCache(tmp_path, SETTINGS)._write_index()
    provider = CacheGuidanceProvider(tmp_path)
    engine = _engine(guidance=provider)
    seen = _capture(engine)
    engine.warmup(16, 24)
    assert provider.missing == 0 and seen[-1]["guidance"] is not None
    assert seen[-1]["guidance"].mask.shape == (1, 1, 16, 24) and seen[-1]["guidance"].text_tokens.shape == (1, 6, 16)
    calls: list[float] = []
    async_provider = AsyncGuidanceProvider(_constant_guidance(calls))
    warmed = _engine(guidance=async_provider)
    warmed.warmup(16, 24)
    assert calls == [] and async_provider._thread is None
    warmed.release()
