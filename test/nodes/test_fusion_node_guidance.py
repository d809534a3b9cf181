"""The node with a guided model (TeSG): guidance_mode cache and fallback, in-process.

The engine's providers are tested in test/engine/test_engine_guidance.py; here the node's wiring:
the parameters reach the engine, each frame's guidance source and age reach FusionStats and the
diagnostics, an uncached frame runs the fallback and is reported, and impossible combinations
fail at configure with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from rclpy.lifecycle import TransitionCallbackReturn

from ivf_perception.engine import Engine, WeightsInfo, save_weights
from ivf_perception.engine.guidance import CacheGuidanceProvider
from ivf_perception.guidance import GuidanceCache
from ivf_perception.io import decode_rgb, decode_thermal, make_header, numpy_to_image
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.io.stats_msg import FusionStatsValues
from ivf_perception.models import build_model
from ivf_perception.nodes.fusion_node import FusionNode
from ivf_perception.nodes.health import assess_health
from ivf_perception.sync import Pair

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
H, W = 64, 80


@pytest.fixture(scope="module")
def tesg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    model = build_model("test_tesg", num_classes=len(MFNET_CLASSES))
    model.set_fallback_text(torch.randn_like(model.fallback_text))
    info = WeightsInfo(variant="test_tesg", preset="test", num_classes=len(MFNET_CLASSES),
                       classes=list(MFNET_CLASSES), palette=list(MFNET_PALETTE))
    return save_weights(model.state_dict(), tmp_path_factory.mktemp("tesg") / "test_tesg.safetensors", info)


def _pair(stamp: int, seed: int = 0) -> Pair:
    rng = np.random.default_rng(seed)
    rgb = numpy_to_image(rng.integers(0, 256, (H, W, 3), np.uint8), "rgb8", header=make_header(stamp, "cam"))
    th = numpy_to_image(rng.integers(0, 256, (H, W), np.uint8), "mono8", header=make_header(stamp, "th"))
    return Pair(stamp, stamp, rgb, th)


def _record_stats(monkeypatch: pytest.MonkeyPatch) -> list[FusionStatsValues]:
    """The FusionStats values the node publishes (the venv's built interface package may predate
    the guidance fields, so the values are checked before conversion to the rclpy message)."""
    seen: list[FusionStatsValues] = []
    real = FusionStatsValues.to_rclpy
    monkeypatch.setattr(FusionStatsValues, "to_rclpy", lambda self: (seen.append(self), real(self))[1])
    return seen


def _listen_to_stats(node: FusionNode) -> None:
    import time

    listener = rclpy.create_node("stats_listener", context=node.context)
    listener.create_subscription(node._stats_type, "fusion/stats", lambda msg: None, 10)
    node._listeners = [listener]
    deadline = time.monotonic() + 10.0
    while node._publishers_by_name["stats"].get_subscription_count() == 0:
        assert time.monotonic() < deadline, "no match on fusion/stats"
        time.sleep(0.01)


def test_cache_mode_guides_cached_frames_and_reports_the_rest(make_node, tesg_weights, tmp_path,
                                                              monkeypatch) -> None:
    cached = _pair(1_000_000_000, seed=0)
    rgb, thermal = decode_rgb(cached.rgb), decode_thermal(cached.thermal)
    mask = torch.zeros(H, W)
    mask[10:40, 20:60] = 1.0
    GuidanceCache(tmp_path, {"generator": "test"}).write(rgb, thermal, mask=mask, text_tokens=torch.randn(6, 16),
                                                         caption="a car", edited_caption="a")
    node = make_node(weights=str(tesg_weights), guidance_mode="cache", guidance_cache=str(tmp_path))
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    assert node._engine.uses_guidance and node._engine.guidance.mode == "cache"
    stats = _record_stats(monkeypatch)
    _listen_to_stats(node)
    published = []
    real_publish = node._publishers_by_name["stats"].publish
    node._publishers_by_name["stats"].publish = lambda msg: (published.append(msg), real_publish(msg))

    results = []
    real_infer = node._engine.infer
    node._engine.infer = lambda *a, **kw: (results.append(real_infer(*a, **kw)), results[-1])[1]

    node._process(cached)
    node._process(_pair(2_000_000_000, seed=1))          # never cached
    assert node._processed == 2 and node._failed == 0
    assert [(s.guidance_source, s.guidance_age_s) for s in stats] == [("cache", 0.0), ("fallback", -1.0)]
    assert len(published) == 2
    if "guidance_source" in type(published[0]).get_fields_and_field_types():  # an interface package built from
        assert [(m.guidance_source, m.guidance_age_s) for m in published] == [("cache", 0.0), ("fallback", -1.0)]
    counters = node._snapshot().counters
    assert counters["guidance cache frames"] == 1 and counters["guidance fallback frames"] == 1
    assert counters["guidance mode"] == "cache" and counters["guidance source"] == "fallback"
    assert counters["guidance fallback reason"] == "not cached"
    values = dict(assess_health(node._snapshot()).values)
    assert values["guidance cache frames"] == "1"

    # the node's guided frame equals the engine run offline with the same cache
    offline = Engine("auto", weights=tesg_weights, device="cpu", guidance=CacheGuidanceProvider(tmp_path))
    expected = offline.infer(rgb, thermal)
    assert expected.guidance.source == "cache" and results[0].guidance.source == "cache"
    np.testing.assert_array_equal(results[0].fused, expected.fused)
    assert not np.array_equal(results[0].fused, Engine("auto", weights=tesg_weights, device="cpu").infer(
        rgb, thermal).fused)                              # the guidance made a difference


def test_fallback_mode_reports_fallback_frames(make_node, tesg_weights, monkeypatch) -> None:
    node = make_node(weights=str(tesg_weights))             # guidance_mode defaults to fallback
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    stats = _record_stats(monkeypatch)
    _listen_to_stats(node)
    node._process(_pair(1_000_000_000))
    assert node._processed == 1 and [s.guidance_source for s in stats] == ["fallback"]
    counters = node._snapshot().counters
    assert counters["guidance fallback frames"] == 1
    assert counters["guidance fallback reason"] == "guidance_mode is fallback"


def test_unguided_models_report_none_and_have_no_guidance_diagnostics(make_node, test_weights, monkeypatch) -> None:
    node = make_node(weights=str(test_weights))
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    stats = _record_stats(monkeypatch)
    _listen_to_stats(node)
    node._process(_pair(1_000_000_000))
    assert [s.guidance_source for s in stats] == ["none"]
    assert not any(k.startswith("guidance") for k in node._snapshot().counters)


def make_constant_guidance():
    """A ``guidance_function`` factory (``module:factory``) for the async test: all-foreground
    masks and fixed tokens, standing in for the generator (which needs BLIP/SD weights)."""
    from ivf_perception.guidance import Guidance

    def guidance(rgb: np.ndarray, thermal: np.ndarray) -> Guidance:
        return Guidance(mask=torch.ones(1, 1, *rgb.shape[:2]), text_tokens=torch.ones(1, 6, 16), source="sig")

    return guidance


def test_async_mode_uses_the_worker_result_while_young(make_node, tesg_weights, monkeypatch) -> None:
    node = make_node(weights=str(tesg_weights), guidance_mode="async", guidance_max_age_s=1.0,
                     guidance_function="test_fusion_node_guidance:make_constant_guidance")
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    stats = _record_stats(monkeypatch)
    _listen_to_stats(node)
    provider = node._engine.guidance
    node._process(_pair(1_000_000_000))
    assert provider.wait_idle()
    node._process(_pair(1_500_000_000))
    assert provider.wait_idle()
    node._process(_pair(3_000_000_000))
    assert [(s.guidance_source, s.guidance_age_s) for s in stats] == [("fallback", -1.0), ("async", 0.5),
                                                                      ("fallback", -1.0)]
    counters = node._snapshot().counters
    assert counters["guidance async frames"] == 1 and counters["guidance fallback frames"] == 2
    assert "1.500 s old" in counters["guidance fallback reason"]
    assert node.trigger_deactivate() == SUCCESS and node.trigger_cleanup() == SUCCESS
    assert not provider._thread.is_alive()      # cleanup releases the engine, which stops the worker


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"guidance_mode": "cache"}, "guidance_mode cache needs guidance_cache"),
    ({"guidance_mode": "cache", "guidance_cache": "/nonexistent/cache"}, "not a guidance cache"),
    ({"guidance_mode": "async"}, "guidance_mode async needs guidance_function"),
])
def test_guidance_configuration_errors_fail_configure_with_the_reason(make_node, tesg_weights, overrides,
                                                                      reason) -> None:
    node = make_node(weights=str(tesg_weights), **overrides)
    assert node.trigger_configure() == FAILURE
    assert reason in node._configure_error and node._engine is None


def test_a_guidance_cache_with_an_unguided_model_fails_configure(make_node, test_weights, tmp_path) -> None:
    GuidanceCache(tmp_path, {"generator": "test"})._write_index()
    node = make_node(weights=str(test_weights), guidance_mode="cache", guidance_cache=str(tmp_path))
    assert node.trigger_configure() == FAILURE
    assert "takes no guidance" in node._configure_error
