"""Engine: pre/post-processing, padding, thermal handling, precision/device errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivf_perception.engine import Engine, EngineError, InputError
from ivf_perception.io.thermal import agc_percentile


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    eng = Engine("test_s4fusion", device="cpu")
    for p in eng.model.fusion_head.parameters():  # a non-trivial fusion, not the pixel average
        p.data.normal_(0, 0.3)
    return eng


def _pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8)


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (65, 17)])
def test_any_size_is_padded_and_cropped_back(engine: Engine, size: tuple[int, int]) -> None:
    rgb, th = _pair(*size)
    res = engine.infer(rgb, th)
    assert res.fused.shape == (*size, 3) and res.fused.dtype == np.uint8
    assert res.labels.shape == size and res.labels.dtype == np.uint8
    assert res.labels.max() < engine.num_classes
    assert res.overlay().shape == (*size, 3)
    assert set(res.timings_ms) == {"preprocess", "inference", "postprocess"}


def test_batch_equals_single_calls(engine: Engine) -> None:
    pairs = [_pair(32, 48, s) for s in range(3)]
    batch = engine.infer_batch([p[0] for p in pairs], [p[1] for p in pairs])
    for (rgb, th), res in zip(pairs, batch):
        single = engine.infer(rgb, th)
        assert np.abs(single.fused.astype(int) - res.fused.astype(int)).max() <= 1
        assert (single.labels == res.labels).mean() > 0.99


def test_sixteen_bit_thermal_goes_through_agc(engine: Engine) -> None:
    rgb, _ = _pair(32, 32)
    raw = np.random.default_rng(1).integers(20000, 24000, (32, 32), dtype=np.uint16)
    a = engine.infer(rgb, raw)
    b = engine.infer(rgb, agc_percentile(raw, engine.agc.low_pct, engine.agc.high_pct))
    np.testing.assert_array_equal(a.fused, b.fused)


def test_gray_stored_as_three_channels_is_accepted(engine: Engine) -> None:
    rgb, th = _pair(32, 32)
    a = engine.infer(rgb, th)
    b = engine.infer(rgb, np.repeat(th[..., None], 3, axis=2))
    np.testing.assert_array_equal(a.fused, b.fused)


def test_thermal_of_another_size_is_resized(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    rgb, _ = _pair(48, 64)
    th = np.full((24, 32), 128, np.uint8)
    res = engine.infer(rgb, th)
    engine.infer(rgb, th)
    assert res.fused.shape == (48, 64, 3)
    assert caplog.text.count("thermal (24, 32) resized to the RGB size (48, 64)") == 1  # once, not per frame


def test_homography_warps_thermal() -> None:
    eng = Engine("test_s4fusion", device="cpu", homography=[1, 0, 4, 0, 1, 0, 0, 0, 1])
    rgb = np.zeros((32, 32, 3), np.uint8)
    th = np.zeros((32, 32), np.uint8)
    th[:, 10] = 255
    batch_input = eng.infer(rgb, th)  # runs; the warp itself is tested in test/io
    assert batch_input.fused.shape == (32, 32, 3)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 2), np.uint8), "thermal image must have 1 or 3 channels"),
    (np.full((8, 8), 2.0, np.float32), r"float thermal must be in \[0, 1\]"),
    (np.zeros((8, 8), np.int32), "thermal dtype int32 is not supported"),
    (np.full((8, 8), np.nan, np.float32), "NaN"),
])
def test_bad_thermal_is_a_clear_error(engine: Engine, bad: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        engine.infer(np.zeros((8, 8, 3), np.uint8), bad)


def test_bad_rgb_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InputError, match="RGB image must be"):
        engine.infer(np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8), np.uint8))


def test_precision_and_device_errors() -> None:
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        Engine("test_s4fusion", device="cpu", precision="fp16")
    with pytest.raises(EngineError, match="precision 'fp8'"):
        Engine("test_s4fusion", device="cpu", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            Engine("test_s4fusion", device="cuda")


def test_bf16_on_cpu_runs_close_to_fp32(engine: Engine) -> None:
    bf16 = Engine(engine.model, device="cpu", precision="bf16")
    rgb, th = _pair(32, 32)
    a, b = engine.infer(rgb, th), bf16.infer(rgb, th)
    assert np.abs(a.fused.astype(int) - b.fused.astype(int)).mean() < 3.0


def test_palette_change_and_validation(engine: Engine) -> None:
    rgb, th = _pair(32, 32)
    engine.set_palette([0xFF0000] * engine.num_classes)
    res = engine.infer(rgb, th)
    over = res.overlay(alpha=1.0)
    labelled = res.labels > 0
    if labelled.any():
        assert (over[labelled] == [255, 0, 0]).all()
    with pytest.raises(ValueError, match="0xRRGGBB"):
        engine.set_palette([0x1000000])


def test_false_colour_thermal_is_converted_by_bt601_luminance() -> None:
    """Decoded rgb8/bgr8 thermal (RGB order) becomes BT.601 luminance, in the engine only."""
    from ivf_perception.engine.preprocess import prepare_thermal
    from ivf_perception.io import decode_thermal, numpy_to_image

    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]] * 2, np.uint8)
    expected = [[0.299, 0.587, 0.114, 1.0]] * 2
    np.testing.assert_allclose(prepare_thermal(decode_thermal(numpy_to_image(rgb, "rgb8"))), expected, atol=1e-6)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_allclose(prepare_thermal(decode_thermal(numpy_to_image(bgr, "bgr8"))), expected, atol=1e-6)
    colour = np.random.default_rng(5).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    lum = colour.astype(np.float32) @ (np.array([0.299, 0.587, 0.114], np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(prepare_thermal(colour), np.clip(lum, 0.0, 1.0))


def test_decoded_mono_thermal_is_normalised_here() -> None:
    """mono8/8UC1 are x/255; mono16 goes through the percentile AGC (never /65535)."""
    from ivf_perception.engine.preprocess import prepare_thermal
    from ivf_perception.io import AGCConfig, decode_thermal, numpy_to_image

    gray = np.array([[0, 51, 255]] * 2, np.uint8)
    for encoding in ("mono8", "8UC1"):
        out = prepare_thermal(decode_thermal(numpy_to_image(gray, encoding)))
        np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]] * 2, atol=1e-7)
    raw = np.random.default_rng(2).integers(0, 65536, (20, 20)).astype(np.uint16)
    out = prepare_thermal(decode_thermal(numpy_to_image(raw, "mono16")))
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_array_equal(out, agc_percentile(raw, 1.0, 99.0))
    np.testing.assert_array_equal(prepare_thermal(raw, AGCConfig(5, 95)), agc_percentile(raw, 5, 95))


def test_sixteen_bit_gray_rgb_goes_through_the_engines_agc() -> None:
    """A mono16 RGB camera: decoded raw, stretched by the engine's AGC (as 16-bit thermal)."""
    from ivf_perception.engine.preprocess import prepare_rgb
    from ivf_perception.io import AGCConfig, decode_rgb, numpy_to_image

    raw = np.random.default_rng(3).integers(0, 65536, (5, 7)).astype(np.uint16)
    out = prepare_rgb(decode_rgb(numpy_to_image(raw, "16UC1")))
    expected = np.rint(agc_percentile(raw) * 255).astype(np.uint8)
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out[:, :, 1], expected)
    narrow = prepare_rgb(raw, AGCConfig(10, 90))
    np.testing.assert_array_equal(narrow[:, :, 0], np.rint(agc_percentile(raw, 10, 90) * 255).astype(np.uint8))


def test_agc_and_registration_are_set_at_construction(engine: Engine) -> None:
    from ivf_perception.io import AGCConfig, HomographyError

    eng = Engine("test_s4fusion", device="cpu", agc=AGCConfig(2, 98), homography=[1, 0, 2, 0, 1, 0, 0, 0, 1])
    assert (eng.agc.low_pct, eng.agc.high_pct) == (2, 98) and eng.homography[0, 2] == 2.0
    with pytest.raises(AttributeError):
        eng.agc = AGCConfig()  # type: ignore[misc]  # read-only: configured at construction
    with pytest.raises(AttributeError):
        eng.homography = None  # type: ignore[misc]
    eng.set_agc(AGCConfig(5, 95))  # the one runtime-safe pre-processing setting (a node parameter)
    assert eng.agc.low_pct == 5
    with pytest.raises(TypeError, match="AGCConfig"):
        eng.set_agc((1, 99))  # type: ignore[arg-type]
    with pytest.raises(HomographyError, match="singular"):
        Engine("test_s4fusion", device="cpu", homography=[0.0] * 9)
    with pytest.raises(EngineError, match="class_names has 2 names but the model has 9 classes"):
        Engine("test_s4fusion", device="cpu", class_names=["a", "b"])


def test_engine_arguments_follow_one_set_of_rules() -> None:
    """Moved from the node's helpers: node, replay and CLI share these rules."""
    from ivf_perception.engine.config import ParameterValueError, PipelineConfig, default_weights, engine_arguments

    model, kw = engine_arguments(PipelineConfig.from_values({"weights": "none", "preset": "small"}))
    assert model == "s4fusion" and "weights" not in kw and kw["preset"] == "small"
    model, kw = engine_arguments(PipelineConfig.from_values(
        {"weights": "/w.safetensors", "homography": [1.0, 0, 0, 0, 1, 0, 0, 0, 1]}))
    assert model == "auto" and kw["weights"] == "/w.safetensors" and kw["preset"] is None
    assert kw["homography"] == [1.0, 0, 0, 0, 1, 0, 0, 0, 1] and "scan_backend" not in kw  # auto: the model's own
    assert kw["backend"] == "torch" and kw["backend_options"] == {}
    _, kw = engine_arguments(PipelineConfig.from_values({"weights": "none", "scan_backend": "ref"}))
    assert kw["scan_backend"] == "ref"
    _, kw = engine_arguments(PipelineConfig.from_values(
        {"weights": "none", "backend": "onnxruntime", "backend_cache_dir": "/cache", "force_rebuild": True}))
    assert kw["backend"] == "onnxruntime" and kw["backend_options"] == {"cache_dir": "/cache", "force_rebuild": True}
    with pytest.raises(ParameterValueError, match="backend must be one of torch, compile, onnxruntime, tensorrt, "
                                                  "got 'chunked'; .* now the scan_backend parameter"):
        PipelineConfig.from_values({"backend": "chunked"})
    assert default_weights(None, None) == default_weights("s4fusion", None) == "default"
    assert default_weights("s4fusion", "tiny") == "default"
    for variant, preset in (("cmfs", None), (None, "small")):
        with pytest.raises(ParameterValueError) as err:
            default_weights(variant, preset)
        text = str(err.value)
        assert "bundled weights ('default') are s4fusion/tiny" in text and "no weights file was given" in text
        assert "--weights none" in text


def test_from_config_builds_the_configured_engine() -> None:
    from ivf_perception.engine.config import PipelineConfig

    config = PipelineConfig.from_values({"variant": "test_s4fusion", "weights": "none", "device": "cpu",
                                         "agc_low_pct": 3.0, "agc_high_pct": 97.0,
                                         "homography": [1, 0, 1, 0, 1, 0, 0, 0, 1], "palette": [0x102030] * 9})
    eng = Engine.from_config(config)
    assert eng.preset == "test" and str(eng.device) == "cpu"
    assert (eng.agc.low_pct, eng.agc.high_pct) == (3.0, 97.0) and eng.homography[0, 2] == 1.0
    assert eng.palette == [0x102030] * 9


def test_results_carry_wall_and_cpu_time_per_stage(engine: Engine) -> None:
    result = engine.infer(np.zeros((32, 48, 3), np.uint8), np.zeros((32, 48), np.uint8))
    assert set(result.timings_ms) == set(result.cpu_ms) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0.0 for v in result.cpu_ms.values())


def test_min_confidence_reaches_the_engine_from_the_pipeline_values() -> None:
    from ivf_perception.engine.config import ParameterValueError, PipelineConfig

    config = PipelineConfig.from_values({"variant": "test_s4fusion", "weights": "none", "device": "cpu",
                                         "min_confidence": 0.99})
    engine = Engine.from_config(config)
    assert engine.min_confidence == 0.99
    rng = np.random.default_rng(0)
    result = engine.infer(rng.integers(0, 256, (32, 40, 3), np.uint8), rng.integers(0, 256, (32, 40), np.uint8))
    # a random 9-class model is never 99 % sure: everything is unlabelled
    assert result.labels is not None and not result.labels.any()
    with pytest.raises(ParameterValueError, match=r"min_confidence must be in \[0.0, 1.0\], got 2.0"):
        PipelineConfig.from_values({"min_confidence": 2.0})


def test_images_over_max_input_pixels_are_refused_before_any_work() -> None:
    engine = Engine("test_s4fusion", device="cpu", max_input_pixels=40 * 50)
    rng = np.random.default_rng(0)
    ok = engine.infer(rng.integers(0, 256, (40, 50, 3), np.uint8), rng.integers(0, 256, (40, 50), np.uint8))
    assert ok.fused.shape == (40, 50, 3)
    with pytest.raises(InputError, match=r"RGB image 41×50 has 2050 pixels, more than max_input_pixels=2000"):
        engine.infer(np.zeros((41, 50, 3), np.uint8), np.zeros((40, 50), np.uint8))
    with pytest.raises(InputError, match=r"thermal image 60×60 has 3600 pixels, more than max_input_pixels=2000"):
        engine.infer(np.zeros((40, 50, 3), np.uint8), np.zeros((60, 60), np.uint16))
    assert Engine("test_s4fusion", device="cpu", max_input_pixels=0).infer(
        np.zeros((60, 60, 3), np.uint8), np.zeros((60, 60), np.uint8)).fused.shape == (60, 60, 3)


def test_telemetry_rows_are_cut_before_the_agc() -> None:
    """A Boson-style telemetry row (values far outside the scene) must not move the AGC window."""
    rng = np.random.default_rng(1)
    scene = rng.integers(20000, 21000, (40, 48)).astype(np.uint16)
    with_telemetry = np.vstack([np.full((1, 48), 65535, np.uint16), scene, np.zeros((2, 48), np.uint16)])
    rgb = rng.integers(0, 256, (40, 48, 3), np.uint8)
    cropping = Engine("test_s4fusion", device="cpu", thermal_crop_rows=(1, 2))
    plain = Engine("test_s4fusion", device="cpu")
    plain.model.load_state_dict(cropping.model.state_dict())
    np.testing.assert_array_equal(cropping.infer(rgb, with_telemetry).fused, plain.infer(rgb, scene).fused)
    with pytest.raises(InputError, match=r"thermal_crop_rows \[1, 2\] leaves 1 of the 4 rows"):
        cropping.infer(rgb, np.zeros((4, 48), np.uint16))


def test_each_stream_keeps_its_own_smoothed_window_until_reset() -> None:
    from ivf_perception.engine.config import PipelineConfig
    from ivf_perception.io.thermal import percentile_bounds

    engine = Engine.from_config(PipelineConfig.from_values(
        {"variant": "test_s4fusion", "weights": "none", "device": "cpu", "agc_smoothing": 0.5,
         "agc_low_pct": 0.0, "agc_high_pct": 100.0}))
    rgb16 = np.tile(np.arange(32, dtype=np.uint16) * 7, (24, 1))  # a 16-bit gray RGB stream
    cold, hot = np.full((24, 32), 1000, np.uint16), np.full((24, 32), 3000, np.uint16)
    cold[0, 0], hot[0, 0] = 900, 3500
    engine.infer(rgb16, cold)
    engine.infer(rgb16, hot)
    streams = engine._agc_streams
    assert streams["thermal"].bounds == pytest.approx((0.5 * 900 + 0.5 * 3000, 0.5 * 1000 + 0.5 * 3500))
    assert streams["rgb"].bounds == pytest.approx(percentile_bounds(rgb16, 0.0, 100.0))
    engine.reset_agc()
    engine.infer(rgb16, hot)
    assert streams["thermal"].bounds == pytest.approx((3000, 3500))
