"""Percentile automatic gain control, numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivf_perception.checks import ShapeError
from ivf_perception.io import AGCConfig, AGCError, agc_percentile, agc_percentile_torch


class TestAGCPercentile:
    def test_smoke(self):
        out = agc_percentile(np.arange(12, dtype=np.uint16).reshape(3, 4))
        assert out.shape == (3, 4) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0

    def test_values_by_hand(self):
        raw = np.arange(101, dtype=np.uint16).reshape(1, 101)  # percentile p of 0..100 is p
        out = agc_percentile(raw, 10.0, 90.0)
        # clip to [10, 90], stretch: (x - 10) / 80
        for x, expected in [(0, 0.0), (10, 0.0), (30, 0.25), (50, 0.5), (90, 1.0), (100, 1.0)]:
            assert out[0, x] == pytest.approx(expected, abs=1e-7)

    def test_linear_interpolation_between_order_statistics(self):
        raw = np.array([[1000, 1010]], np.uint16)
        # numpy "linear": p25 = 1002.5, p75 = 1007.5 -> 1000 -> 0, 1010 -> 1
        np.testing.assert_allclose(agc_percentile(raw, 25, 75), [[0.0, 1.0]])
        raw = np.array([[0, 10, 20, 40]], np.uint16)  # p50 = 15
        np.testing.assert_allclose(agc_percentile(raw, 0, 50), [[0.0, 10 / 15, 1.0, 1.0]], rtol=1e-6)

    def test_min_max_stretch(self):
        raw = np.array([[30000, 30100], [30200, 30400]], np.uint16)
        np.testing.assert_allclose(agc_percentile(raw, 0, 100), [[0.0, 0.25], [0.5, 1.0]], rtol=1e-6)

    def test_outliers_are_clipped(self):
        raw = np.full((100, 100), 8000, np.uint16)
        raw[:, 50:] = 8100
        raw[0, 0], raw[0, 1] = 0, 65535  # dead and hot pixel
        out = agc_percentile(raw)
        assert out[5, 5] == 0.0 and out[5, 60] == 1.0  # the scene itself spans the full range

    def test_constant_image_returns_zeros(self):
        for raw in (np.full((8, 8), 31000, np.uint16), np.full((3, 3), 0.5, np.float32)):
            out = agc_percentile(raw)
            assert out.dtype == np.float32
            assert not np.isnan(out).any()
            np.testing.assert_array_equal(out, 0.0)

    def test_float_and_other_int_inputs(self):
        np.testing.assert_allclose(agc_percentile(np.array([[-5.0, 5.0]]), 0, 100), [[0.0, 1.0]])
        np.testing.assert_allclose(agc_percentile(np.array([[7, 9]], np.int32), 0, 100), [[0.0, 1.0]])

    def test_noncontiguous(self):
        raw = np.random.default_rng(0).integers(0, 65535, (20, 30)).astype(np.uint16)
        np.testing.assert_array_equal(agc_percentile(raw[:, ::2]), agc_percentile(raw[:, ::2].copy()))

    @pytest.mark.parametrize(
        "low, high",
        [(50, 50), (60, 40), (-1, 99), (1, 101), (float("nan"), 99), (1, float("inf"))],
    )
    def test_exception_percentiles(self, low, high):
        with pytest.raises(AGCError, match="0 <= low_pct < high_pct <= 100"):
            agc_percentile(np.zeros((2, 2), np.uint16), low, high)

    def test_exception_inputs(self):
        with pytest.raises(AGCError, match="must be numbers"):
            agc_percentile(np.zeros((2, 2), np.uint16), "low", 99)
        with pytest.raises(AGCError, match="non-empty"):
            agc_percentile(np.zeros((0, 3), np.uint16))
        with pytest.raises(AGCError, match="NaN or infinite"):
            agc_percentile(np.array([[1.0, np.nan]]))
        with pytest.raises(AGCError, match="integer counts .* got dtype bool"):
            agc_percentile(np.zeros((2, 2), bool))

    def test_config(self):
        cfg = AGCConfig(low_pct=10, high_pct=90)
        raw = np.arange(101, dtype=np.uint16).reshape(1, -1)
        np.testing.assert_array_equal(cfg.apply(raw), agc_percentile(raw, 10, 90))
        assert AGCConfig() == AGCConfig(1.0, 99.0)
        with pytest.raises(AGCError, match="low_pct=99, high_pct=1"):
            AGCConfig(low_pct=99, high_pct=1)


class TestAGCPercentileTorch:
    @staticmethod
    def batch(seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        images = [
            rng.integers(7000, 9000, (24, 32)),  # typical raw counts
            rng.normal(30000, 40, (24, 32)).clip(0, 65535),  # narrow span: precision matters
            np.full((24, 32), 12345),  # constant
        ]
        hot = rng.integers(0, 65535, (24, 32))
        images.append(hot)
        return np.stack(images)[:, None].astype(np.uint16)

    @pytest.mark.parametrize("pct", [(1.0, 99.0), (0.0, 100.0), (2.5, 97.3)])
    def test_equals_numpy(self, pct):
        raw = self.batch()
        expected = np.stack([agc_percentile(img[0], *pct) for img in raw])[:, None]
        out = agc_percentile_torch(torch.from_numpy(raw.astype(np.int32)), *pct)
        assert out.dtype == torch.float32 and out.shape == raw.shape
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(out[2].numpy(), 0.0)  # constant image: zeros, no NaN

    def test_uint16_and_float_input(self):
        raw = self.batch(1)
        ref = agc_percentile_torch(torch.from_numpy(raw.astype(np.int32)))
        torch.testing.assert_close(agc_percentile_torch(torch.from_numpy(raw)), ref)
        torch.testing.assert_close(agc_percentile_torch(torch.from_numpy(raw).double()), ref)

    def test_noncontiguous(self):
        raw = torch.from_numpy(self.batch(2).astype(np.int32))
        view = raw[:, :, :, ::2]
        assert not view.is_contiguous()
        torch.testing.assert_close(agc_percentile_torch(view), agc_percentile_torch(view.contiguous()))

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"raw: expected 4 dimensions \(B 1 H W\)"):
            agc_percentile_torch(torch.zeros(2, 8, 8))
        with pytest.raises(ShapeError, match="expected 1="):
            agc_percentile_torch(torch.zeros(2, 3, 8, 8))
        with pytest.raises(AGCError, match="0 <= low_pct < high_pct <= 100"):
            agc_percentile_torch(torch.zeros(1, 1, 4, 4), 99, 1)
        with pytest.raises(AGCError, match="NaN or infinite"):
            agc_percentile_torch(torch.full((1, 1, 2, 2), float("nan")))

    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_cuda_equals_cpu(self):
        raw = torch.from_numpy(self.batch(3).astype(np.int32))
        out = agc_percentile_torch(raw.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), agc_percentile_torch(raw), atol=1e-6, rtol=0)


def _agc_by_np_percentile(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """The implementation the histogram path replaced (np.percentile + float32 arithmetic)."""
    lo, hi = np.percentile(raw, [low, high])
    lo32 = np.float32(lo)
    span = np.float32(hi) - lo32
    if not span > 0:
        return np.zeros(raw.shape, np.float32)
    out = raw.astype(np.float32)
    out -= lo32
    out *= np.float32(1.0) / span
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_histogram_percentiles_equal_np_percentile_exactly(dtype) -> None:
    """The uint8/uint16 fast path (a cumulative histogram) against np.percentile: equal, not close."""
    from ivf_perception.io.thermal import _percentiles_by_histogram

    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    for trial in range(300):
        n = int(rng.integers(1, 2000))
        raw = rng.integers(0, int(rng.integers(1, top + 1)) + 1, n).astype(dtype)
        pcts = (float(rng.uniform(0, 100)), [0.0, 1.0, 12.5, 50.0, 99.0, 100.0][trial % 6])
        assert _percentiles_by_histogram(raw, pcts) == list(np.percentile(raw, pcts)), (n, pcts)


@pytest.mark.parametrize(("shape", "low", "high"), [((480, 640), 1.0, 99.0), ((37, 53), 0.0, 100.0),
                                                    ((3, 5), 2.5, 97.5), ((1, 1), 1.0, 99.0), ((512, 640), 10.0, 60.0)])
def test_mono16_agc_equals_the_np_percentile_implementation(shape, low, high) -> None:
    """Same output within one grey level (the test asks for it), in fact bit-identical."""
    rng = np.random.default_rng(3)
    raw = rng.normal(22_000, 900, shape).clip(0, 65535).astype(np.uint16)
    raw.flat[:: max(1, raw.size // 7)] = 65535  # hot pixels
    got, ref = agc_percentile(raw, low, high), _agc_by_np_percentile(raw, low, high)
    assert np.abs(np.rint(got * 255) - np.rint(ref * 255)).max() <= 1
    np.testing.assert_array_equal(got, ref)


def test_constant_mono16_frame_still_maps_to_zeros() -> None:
    assert not agc_percentile(np.full((480, 640), 1234, np.uint16)).any()


def test_smoothed_window_is_the_exponential_average_of_each_frames_percentiles() -> None:
    from ivf_perception.io.thermal import AGCState, percentile_bounds, stretch

    rng = np.random.default_rng(5)
    frames = [rng.integers(1000 + 300 * i, 3000 + 500 * i, (24, 32)).astype(np.uint16) for i in range(4)]
    state = AGCState(AGCConfig(2.0, 98.0, smoothing=0.75))
    expected: tuple[float, float] | None = None
    for frame in frames:
        lo, hi = percentile_bounds(frame, 2.0, 98.0)
        expected = (lo, hi) if expected is None else (0.75 * expected[0] + 0.25 * lo, 0.75 * expected[1] + 0.25 * hi)
        out = state.apply(frame)
        assert state.bounds == pytest.approx(expected)
        np.testing.assert_array_equal(out, stretch(frame, *expected))
    # the last frame alone would be stretched differently: the window lags the scene on purpose
    assert not np.array_equal(out, agc_percentile(frames[-1], 2.0, 98.0))
    state.reset()
    np.testing.assert_array_equal(state.apply(frames[0]), agc_percentile(frames[0], 2.0, 98.0))


def test_without_smoothing_a_stream_equals_the_per_frame_agc_and_a_new_size_restarts() -> None:
    from ivf_perception.io.thermal import AGCState

    rng = np.random.default_rng(6)
    state = AGCState(AGCConfig(1.0, 99.0))
    for _ in range(3):
        frame = rng.integers(0, 65535, (16, 20)).astype(np.uint16)
        np.testing.assert_array_equal(state.apply(frame), agc_percentile(frame))
    smooth = AGCState(AGCConfig(1.0, 99.0, smoothing=0.9))
    smooth.apply(np.full((16, 20), 100, np.uint16) + np.arange(20, dtype=np.uint16))
    other = rng.integers(5000, 6000, (8, 10)).astype(np.uint16)
    np.testing.assert_array_equal(smooth.apply(other), agc_percentile(other))  # another camera mode


def test_fixed_window_maps_kelvin_x100_linearly() -> None:
    # radiometric T-linear counts: 0 degC = 27315, 50 degC = 32315, 100 degC = 37315
    cfg = AGCConfig(mode="fixed", fixed_low=27315, fixed_high=37315)
    counts = np.array([[27000, 27315, 32315], [37315, 40000, 29815]], np.uint16)
    np.testing.assert_allclose(cfg.apply(counts), [[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]], atol=1e-6)
    from ivf_perception.io.thermal import AGCState

    state = AGCState(AGCConfig(mode="fixed", fixed_low=27315, fixed_high=37315, smoothing=0.9))
    np.testing.assert_array_equal(state.apply(counts), cfg.apply(counts))  # no history in fixed mode


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "auto"}, "AGC mode must be one of percentile, fixed"),
    ({"mode": "fixed", "fixed_low": 5.0, "fixed_high": 5.0}, "needs finite fixed_low < fixed_high"),
    ({"smoothing": 1.0}, r"AGC smoothing must be in \[0, 1\)"),
])
def test_bad_agc_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(AGCError, match=message):
        AGCConfig(**kwargs)


def test_crop_rows_drops_telemetry_and_refuses_to_crop_everything() -> None:
    from ivf_perception.io.thermal import crop_rows

    frame = np.arange(6 * 4, dtype=np.uint16).reshape(6, 4)
    np.testing.assert_array_equal(crop_rows(frame, 1, 2), frame[1:4])
    with pytest.raises(AGCError, match=r"thermal_crop_rows \[3, 2\] leaves 1 of the 6 rows"):
        crop_rows(frame, 3, 2)
