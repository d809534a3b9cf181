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
    assert default_weights("cmfs", None) == default_weights(None, "small") == "none"


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
