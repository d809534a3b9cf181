"""The node driven in-process (its own rclpy context and domain): fast checks of every transition,
of configure failures, of runtime parameter application and of the engine-error path.

These inspect the node's internals on purpose (STYLE, from yolo_ros: after deactivate/cleanup
check that the model is really gone). The cross-process behaviour is in the other test files.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from ivf_perception.engine import Engine
from ivf_perception.io import AGCConfig, image_to_numpy, make_header, numpy_to_image
from ivf_perception.nodes.fusion_node import FusionNode, main
from ivf_perception.nodes.health import ERROR, OK, assess_health
from ivf_perception.sync import Pair

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def _subscribe(node: FusionNode, output: str, topic: str) -> None:
    """A real subscriber (another node in the same context) on one output, once it is matched."""
    from sensor_msgs.msg import Image

    listener = rclpy.create_node(f"listener_{output}", context=node.context)
    listener.create_subscription(node._stats_type if output == "stats" else Image, topic, lambda msg: None, 10)
    node._listeners = [*getattr(node, "_listeners", []), listener]  # kept alive with the node
    deadline = time.monotonic() + 10.0
    while node._publishers_by_name[output].get_subscription_count() == 0:
        assert time.monotonic() < deadline, f"no match on {topic}"
        time.sleep(0.01)


def _spy(node: FusionNode, output: str) -> list:
    """Record what the real publisher of ``output`` publishes."""
    published: list = []
    pub = node._publishers_by_name[output]
    real_publish = pub.publish
    pub.publish = lambda msg: (published.append(msg), real_publish(msg))
    return published


def _pair(stamp: int = 1_000) -> Pair:
    rng = np.random.default_rng(0)
    rgb = numpy_to_image(rng.integers(0, 256, (64, 80, 3), np.uint8), "rgb8", header=make_header(stamp, "cam"))
    th = numpy_to_image(rng.integers(0, 256, (64, 80), np.uint8), "mono8", header=make_header(stamp, "th"))
    return Pair(stamp, stamp, rgb, th)


def test_every_transition_builds_starts_stops_and_releases(make_node) -> None:
    node = make_node()
    assert node._engine is None and not node._publishers_by_name
    assert node.trigger_configure() == SUCCESS
    engine = node._engine
    assert engine is not None and engine.model is not None
    assert set(node._publishers_by_name) == {"fused", "labels", "overlay", "stats", "camera_info", "class_info"}
    assert node.trigger_activate() == SUCCESS
    assert node._worker.is_alive() and len(node._subscriptions_list) == 4
    worker = node._worker
    assert node.trigger_deactivate() == SUCCESS
    assert not worker.is_alive() and node._worker is None and node._subscriptions_list == []
    assert node._engine is engine, "deactivate keeps the model for a quick re-activate"
    assert node.trigger_activate() == SUCCESS and node.trigger_deactivate() == SUCCESS
    assert node.trigger_cleanup() == SUCCESS
    assert node._engine is None and engine.model is None, "cleanup releases the model"
    assert not node._publishers_by_name
    assert node.trigger_shutdown() == SUCCESS and node.finalized.done()


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"weights": "/nonexistent/w.safetensors"}, "weights file not found"),
    ({"variant": "s4fusion"}, "holds weights of variant 'test_s4fusion' but variant 's4fusion' was requested"),
    ({"class_names": ["a", "b"]}, "class_names has 2 names but the model has 9 classes"),
    ({"homography": [0.0] * 9}, "invalid parameter: homography"),
    ({"agc_low_pct": 50.0, "agc_high_pct": 40.0}, "low_pct < high_pct"),
    ({"weights": "none", "variant": "no_such_model"}, "no_such_model"),
])
def test_configure_fails_with_the_reason(make_node, overrides, reason) -> None:
    node = make_node(**overrides)
    assert node.trigger_configure() == FAILURE
    assert reason in node._configure_error
    report = assess_health(node._snapshot())
    assert report.level == ERROR and reason in report.message
    assert node._engine is None


def test_safe_parameters_apply_at_runtime_and_others_wait_for_configure(make_node) -> None:
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    results = node.set_parameters([Parameter("overlay_alpha", value=0.9), Parameter("slop_s", value=0.2),
                                   Parameter("palette", value=[0x112233] * 9),
                                   Parameter("agc_low_pct", value=5.0), Parameter("overlay_enabled", value=False)])
    assert all(r.successful for r in results)
    assert node._runtime.overlay_alpha == 0.9 and not node._runtime.overlay_enabled
    assert node._engine.agc.low_pct == 5.0 and node._pairer.slop_s == pytest.approx(0.2)
    assert node._engine.palette == [0x112233] * 9
    refused = node.set_parameters([Parameter("qos_depth", value=3)])[0]
    assert not refused.successful and "deactivate first" in refused.reason
    assert node.trigger_deactivate() == SUCCESS
    assert node.set_parameters([Parameter("qos_depth", value=3)])[0].successful


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "16UC1", "bgr8", "rgb8", "8UC1"])
def test_every_thermal_encoding_at_another_resolution_is_registered_into_the_rgb_frame(make_node, test_weights,
                                                                                       encoding) -> None:
    """Thermal at twice the RGB resolution, warped by the homography parameter, with custom AGC."""
    homography = [0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0]  # thermal px -> RGB px
    node = make_node(homography=homography, agc_low_pct=2.0, agc_high_pct=98.0)
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    _subscribe(node, "labels", "segmentation/labels")
    published = _spy(node, "labels")

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (64, 80, 3), np.uint8)
    if encoding in ("mono16", "16UC1"):
        thermal = rng.integers(20_000, 24_000, (128, 160), dtype=np.uint16)
    elif encoding in ("bgr8", "rgb8"):
        thermal = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    else:
        thermal = rng.integers(0, 256, (128, 160), dtype=np.uint8)
    rgb_msg = numpy_to_image(rgb, "rgb8", header=make_header(5_000, "cam"))
    th_msg = numpy_to_image(thermal, encoding, header=make_header(5_000, "th"))
    node._process(Pair(5_000, 5_000, rgb_msg, th_msg))
    assert node._failed == 0 and len(published) == 1

    agc = AGCConfig(2.0, 98.0)
    reference = Engine("auto", weights=test_weights, device="cpu", homography=homography, agc=agc)
    as_recorded = thermal[:, :, ::-1] if encoding == "bgr8" else thermal  # the engine takes RGB order
    expected = reference.infer(rgb, np.ascontiguousarray(as_recorded))
    got = image_to_numpy(published[0])
    assert got.shape == (64, 80) and published[0].header.frame_id == "cam"
    np.testing.assert_array_equal(got, expected.labels)


def test_outputs_nobody_subscribes_to_are_not_encoded_or_published(make_node) -> None:
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    spies = {name: _spy(node, name) for name in ("fused", "labels", "overlay", "stats")}
    node._process(_pair(1_000))
    assert node._processed == 1 and node._failed == 0
    assert not any(spies.values()), "nothing is subscribed: nothing may be published"

    _subscribe(node, "labels", "segmentation/labels")
    node._process(_pair(2_000))
    assert [len(spies[n]) for n in ("fused", "labels", "overlay", "stats")] == [0, 1, 0, 0]
    _subscribe(node, "overlay", "segmentation/overlay")
    _subscribe(node, "fused", "fused/image")
    node._process(_pair(3_000))
    assert [len(spies[n]) for n in ("fused", "labels", "overlay", "stats")] == [1, 2, 1, 0]
    assert spies["fused"][0].header.frame_id == "cam" and spies["overlay"][0].encoding == "rgb8"


def test_class_ids_are_computed_only_while_labels_overlay_or_stats_are_subscribed(make_node) -> None:
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    asked: list[bool] = []
    real_infer = node._engine.infer
    node._engine.infer = lambda rgb, th, labels=True, **kw: (asked.append(labels),
                                                             real_infer(rgb, th, labels=labels, **kw))[1]
    _subscribe(node, "fused", "fused/image")
    fused = _spy(node, "fused")
    node._process(_pair(1_000))
    assert asked == [False] and len(fused) == 1 and node._failed == 0  # fused alone: no argmax
    _subscribe(node, "stats", "fusion/stats")
    stats = _spy(node, "stats")
    node._process(_pair(2_000))
    assert asked == [False, True] and sum(stats[0].class_pixel_counts) == 64 * 80


def test_engine_can_skip_the_class_ids(test_weights) -> None:
    engine = Engine("auto", weights=test_weights, device="cpu")
    rgb, th = np.zeros((64, 80, 3), np.uint8), np.zeros((64, 80), np.uint8)
    full, fused_only = engine.infer(rgb, th), engine.infer(rgb, th, labels=False)
    assert fused_only.labels is None and fused_only.overlay() is None and full.labels is not None
    np.testing.assert_array_equal(fused_only.fused, full.fused)


def test_diagnostics_report_the_median_cost_of_each_stage(make_node) -> None:
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    for stamp in (1_000, 2_000, 3_000):
        node._process(_pair(stamp))
    values = dict(assess_health(node._snapshot()).values)
    for stage in ("decode", "preprocess", "inference", "postprocess", "publish images", "node work", "node work CPU"):
        assert float(values[f"median {stage} (ms)"]) >= 0.0
    assert "median overlay (ms)" not in values, "no overlay subscriber: the overlay is never drawn"


def test_decoded_inputs_view_the_message_buffers(make_node) -> None:
    """The worker reads camera frames in place (no copy before the engine); results stay right."""
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    seen: list = []
    real_infer = node._engine.infer
    node._engine.infer = lambda rgb, th, **kw: (seen.append((rgb, th)), real_infer(rgb, th, **kw))[1]
    pair = _pair(1_000)
    node._process(pair)
    rgb, th = seen[0]
    assert np.shares_memory(rgb, np.frombuffer(pair.rgb.data, np.uint8))
    assert np.shares_memory(th, np.frombuffer(pair.thermal.data, np.uint8))
    np.testing.assert_array_equal(rgb, image_to_numpy(pair.rgb))


def test_engine_error_skips_the_frame_reports_error_and_recovers(make_node) -> None:
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    real_infer = node._engine.infer

    def out_of_memory(*args, **kwargs):  # a stand-in: this machine has no GPU to exhaust
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    node._engine.infer = out_of_memory
    node._process(_pair(1_000))
    assert node._failed == 1 and node._processed == 0 and node._worker.is_alive()
    report = assess_health(node._snapshot())
    assert report.level == ERROR and "OutOfMemoryError: CUDA out of memory" in report.message

    node._engine.infer = real_infer
    node._process(_pair(2_000))
    assert node._processed == 1
    report = assess_health(node._snapshot())
    assert report.level == OK and dict(report.values)["last error"].startswith("OutOfMemoryError")


def test_without_the_interface_package_the_node_runs_without_stats(make_node, monkeypatch) -> None:
    for name in [m for m in sys.modules if m.startswith("ivf_perception_msgs")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ivf_perception_msgs", None)  # import fails as if never built
    node = make_node()
    assert node._stats_type is None and node._class_info_type is None
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    assert set(node._publishers_by_name) == {"fused", "labels", "overlay", "camera_info"}
    node._process(_pair())
    assert node._processed == 1 and node._failed == 0


def test_invalid_startup_parameter_exits_2_with_the_reason(domain_id, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))
    assert main(["fusion_node", "--ros-args", "-p", "overlay_alpha:=2.0"]) == 2
    assert "overlay_alpha" in capsys.readouterr().err


def test_onnxruntime_backend_configures_runs_and_a_failed_build_can_be_retried(make_node, test_weights, onnx_cache,
                                                                               onnx_size, monkeypatch) -> None:
    """The backend parameter on the node: a missing package (simulated: onnxruntime IS installed here, a None
    entry in sys.modules makes its import fail) and an input larger than a fixed-size ONNX file fail configure
    with the reason and leave nothing built; after fixing the parameter, configure succeeds."""
    cache, onnx_path = onnx_cache
    node = make_node(backend="onnxruntime", backend_cache_dir=str(cache), warmup_size=list(onnx_size))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert node.trigger_configure() == FAILURE
    assert "pip install onnxruntime" in node._configure_error and node._engine is None
    monkeypatch.delitem(sys.modules, "onnxruntime")
    assert node.trigger_configure() == SUCCESS
    info = node._engine.describe()
    assert info["backend"] == "onnxruntime" and info["onnx_file"] == str(onnx_path), "the cached export is reused"
    assert node.trigger_activate() == SUCCESS
    _subscribe(node, "labels", "segmentation/labels")
    published = _spy(node, "labels")
    pair = _pair(3_000)  # 64x80 frames, padded to the 64x96 export
    node._process(pair)
    assert node._failed == 0 and len(published) == 1
    expected = Engine("auto", weights=test_weights, device="cpu").infer(image_to_numpy(pair.rgb),
                                                                       image_to_numpy(pair.thermal))
    assert (image_to_numpy(published[0]) == expected.labels).mean() >= 0.99  # padding differs: 64x80 vs 64x96

    assert node.trigger_deactivate() == SUCCESS and node.trigger_cleanup() == SUCCESS
    assert all(r.successful for r in node.set_parameters([Parameter("weights", value=str(onnx_path)),
                                                          Parameter("warmup_size", value=[96, 128])]))
    assert node.trigger_configure() == FAILURE
    assert "larger than the 64x96" in node._configure_error and onnx_path.name in node._configure_error
    assert node._engine is None
    assert node.set_parameters([Parameter("warmup_size", value=list(onnx_size))])[0].successful
    assert node.trigger_configure() == SUCCESS and node._engine.model is None, ".onnx weights: no torch model"


def test_configure_logs_what_the_weights_were_trained_on(make_node, tmp_path, capfd) -> None:
    from ivf_perception.engine import WeightsInfo, save_weights
    from ivf_perception.models import build_model

    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9,
                       training_domain=["generated scenes", "real unlabelled pairs"])
    weights = save_weights(build_model("test_s4fusion").state_dict(), tmp_path / "w.safetensors", info)
    node = make_node(weights=str(weights), min_confidence=0.5)
    assert node.trigger_configure() == SUCCESS
    assert node._engine.min_confidence == 0.5
    err = capfd.readouterr().err
    assert ("weights trained on: generated scenes + real unlabelled pairs; class labels were learnt from "
            "synthetic scenes only") in err


def test_a_frame_over_max_input_pixels_is_skipped_and_the_node_keeps_serving(make_node) -> None:
    node = make_node(max_input_pixels=64 * 80 - 1, warmup_size=[32, 40])
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    node._process(_pair(1_000))  # 64x80 = 5120 pixels, one too many
    assert node._failed == 1 and node._processed == 0 and node._worker.is_alive()
    report = assess_health(node._snapshot())
    assert "InputError: RGB image 64×80 has 5120 pixels, more than max_input_pixels=5119" in report.message
    assert node.trigger_deactivate() == SUCCESS
    node.set_parameters([Parameter("max_input_pixels", value=64 * 80)])
    assert node.trigger_cleanup() == SUCCESS and node.trigger_configure() == SUCCESS
    assert node.trigger_activate() == SUCCESS
    node._process(_pair(2_000))
    assert node._processed == 1 and node._failed == 0


def _mono16_pair(stamp: int, thermal: np.ndarray) -> Pair:
    rgb = numpy_to_image(np.full((64, 80, 3), 128, np.uint8), "rgb8", header=make_header(stamp, "cam"))
    th = numpy_to_image(thermal, "mono16", header=make_header(stamp, "th"))
    return Pair(stamp, stamp, rgb, th)


def test_thermal_agc_smoothing_crop_and_fixed_range_through_the_node(make_node) -> None:
    node = make_node(agc_smoothing=0.5, agc_low_pct=0.0, agc_high_pct=100.0, thermal_crop_rows=[1, 0])
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    cold = np.full((65, 80), 1000, np.uint16)
    cold[0] = 65535  # a telemetry row: cut before the AGC sees it
    cold[1, 0] = 900
    hot = np.full((65, 80), 3000, np.uint16)
    hot[0], hot[1, 0] = 0, 3500
    node._process(_mono16_pair(1_000, cold))
    node._process(_mono16_pair(2_000, hot))
    assert node._processed == 2 and node._failed == 0
    thermal_agc = node._engine._agc_streams["thermal"]
    assert thermal_agc.bounds == pytest.approx((0.5 * 900 + 0.5 * 3000, 0.5 * 1000 + 0.5 * 3500))
    # a pairing reset (bag loop, clock jump) restarts the window from the next frame
    node._pairer.stats.resets += 1
    node._process(_mono16_pair(3_000, hot))
    assert thermal_agc.bounds == pytest.approx((3000, 3500))
    # the AGC parameters are safe at runtime; an empty fixed window is refused with the reason
    refused = node.set_parameters([Parameter("agc_fixed_low", value=70000.0)])[0]  # above agc_fixed_high 65535
    assert not refused.successful and "fixed_low < fixed_high" in refused.reason
    assert all(r.successful for r in node.set_parameters([
        Parameter("agc_mode", value="fixed"), Parameter("agc_fixed_low", value=27315.0),
        Parameter("agc_fixed_high", value=37315.0)]))
    assert node._engine.agc.mode == "fixed" and node._engine.agc.fixed_low == 27315.0


def test_configure_logs_which_default_weights_and_why(make_node) -> None:
    """``weights: default`` on the CPU: configure says the CPU default was picked (the CUDA cases are
    the resolver's, tested without a GPU in test/engine/test_default_weights.py)."""
    node = make_node(weights="default")
    real = node.get_logger()
    said: list[str] = []

    class _Recorder:  # the real logger, with info() recorded too
        def __getattr__(self, name: str):
            return getattr(real, name)

        def info(self, message: str, **kwargs) -> None:
            said.append(message)
            real.info(message, **kwargs)

    recorder = _Recorder()
    node.get_logger = lambda: recorder  # type: ignore[method-assign]
    assert node.trigger_configure() == SUCCESS
    assert "weights 'default' on cpu: using the CPU default s4fusion_tiny_default" in said
    assert node._engine.weights_path.name == "s4fusion_tiny_default.safetensors"
