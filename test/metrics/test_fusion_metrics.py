"""Fusion metrics: hand-computed cases, degenerate inputs, identities, and cross-checks of
VIF / Qabf / SSIM / MI against straightforward loop formulations of the reference maths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ivf_perception.checks import ShapeError
from ivf_perception.metrics import (
    FUSION_METRIC_NAMES,
    PSNR_CAP_DB,
    FusionMetricAccumulator,
    average_gradient,
    correlation_coefficient,
    entropy,
    fusion_metrics,
    mutual_information,
    psnr,
    qabf,
    scd,
    spatial_frequency,
    ssim,
    ssim_pair,
    std,
    to_gray_u8,
    vif,
    vif_pair,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _rand(shape, seed=0, smooth=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape).astype(np.float64)
    if smooth:  # some spatial structure, still whole gray levels
        x = np.round((x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, (1, 1), (0, 1))) / 4)
    return x


def _is_pos_zero(v: float) -> bool:
    return v == 0.0 and math.copysign(1.0, v) == 1.0


# ---------------------------------------------------------------------------------------------
# independent loop formulations of the reference maths (deliberately naive)
# ---------------------------------------------------------------------------------------------


def _loop_conv_valid(x, kernel):
    """scipy.signal.convolve2d(x, kernel, 'valid') written as loops (flip, then slide)."""
    k = kernel[::-1, ::-1]
    n, m = k.shape
    h, w = x.shape
    out = np.zeros((max(h - n + 1, 0), max(w - m + 1, 0)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(x[i:i + n, j:j + m] * k)
    return out


def _loop_conv_same_zero(x, kernel):
    """scipy.signal.convolve2d(x, kernel, 'same') with zero fill, 3x3 kernel, as loops."""
    h, w = x.shape
    padded = np.zeros((h + 2, w + 2))
    padded[1:-1, 1:-1] = x
    k = kernel[::-1, ::-1]
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out[i, j] = np.sum(padded[i:i + 3, j:j + 3] * k)
    return out


def _loop_vif_pair(ref, dist):
    """Pixel-domain VIF as the CDDFuse reference states it: 2-D MATLAB-style windows, loops."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        sd = n / 5.0
        m = (n - 1) / 2
        y, x = np.ogrid[-m:m + 1, -m:m + 1]
        h = np.exp(-(x * x + y * y) / (2 * sd * sd))
        h[h < np.finfo(h.dtype).eps * h.max()] = 0
        win = h / h.sum()
        kern = np.rot90(win, 2)
        if scale > 1:
            ref = _loop_conv_valid(ref, kern)[::2, ::2]
            dist = _loop_conv_valid(dist, kern)[::2, ::2]
        mu1 = _loop_conv_valid(ref, kern)
        mu2 = _loop_conv_valid(dist, kern)
        s1 = _loop_conv_valid(ref * ref, kern) - mu1 * mu1
        s2 = _loop_conv_valid(dist * dist, kern) - mu2 * mu2
        s12 = _loop_conv_valid(ref * dist, kern) - mu1 * mu2
        for i in range(s1.shape[0]):
            for j in range(s1.shape[1]):
                a, b, c = max(s1[i, j], 0.0), max(s2[i, j], 0.0), s12[i, j]
                g = c / (a + eps)
                sv = b - g * c
                if a < eps:
                    g, sv, a = 0.0, b, 0.0
                if b < eps:
                    g, sv = 0.0, 0.0
                if g < 0:
                    sv, g = b, 0.0
                sv = max(sv, eps)
                num += math.log10(1 + g * g * a / (sv + sigma_nsq))
                den += math.log10(1 + a / sigma_nsq)
    return 1.0 if den == 0 else num / den


def _loop_qabf(f, a, b):
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def edges(img):
        sx, sy = _loop_conv_same_zero(img, h3), _loop_conv_same_zero(img, h1)
        g = np.sqrt(sx ** 2 + sy ** 2)
        ang = np.empty_like(img)
        for idx in np.ndindex(img.shape):
            ang[idx] = math.pi / 2 if sx[idx] == 0 else math.atan(sy[idx] / sx[idx])
        return g, ang

    def q(gs, as_, gf, af):
        out = np.empty_like(gs)
        for idx in np.ndindex(gs.shape):
            if gs[idx] > gf[idx]:
                gg = gf[idx] / gs[idx]
            elif gs[idx] < gf[idx]:
                gg = gs[idx] / gf[idx]
            else:
                gg = gf[idx]
            aa = 1 - abs(as_[idx] - af[idx]) / (math.pi / 2)
            out[idx] = 0.9994 / (1 + math.exp(-15 * (gg - 0.5))) * 0.9879 / (1 + math.exp(-22 * (aa - 0.8)))
        return out

    ga, aa = edges(a)
    gb, ab = edges(b)
    gf, af = edges(f)
    return float(np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def _loop_ssim(x, y, win=7, data_range=255.0):
    """skimage structural_similarity defaults, one window at a time (sample covariance)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i:i + win, j:j + win].ravel(), y[i:i + win, j:j + win].ravel()
            mx, my = px.mean(), py.mean()
            vx, vy = px.var(ddof=1), py.var(ddof=1)
            cxy = np.sum((px - mx) * (py - my)) / (px.size - 1)
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def _unique_mi(x, y):
    """MI over the distinct values (what sklearn.metrics.mutual_info_score does), natural log."""
    pairs, counts = np.unique(np.stack([x.ravel(), y.ravel()]), axis=1, return_counts=True)
    n = x.size
    _, cx = np.unique(x.ravel(), return_counts=True)
    px = dict(zip(np.unique(x.ravel()), cx / n))
    _, cy = np.unique(y.ravel(), return_counts=True)
    py = dict(zip(np.unique(y.ravel()), cy / n))
    return sum((c / n) * math.log((c / n) / (px[a] * py[b])) for (a, b), c in zip(pairs.T, counts))


# ---------------------------------------------------------------------------------------------
# preparation
# ---------------------------------------------------------------------------------------------


class TestToGrayU8:
    def test_gray_passes(self):
        g = np.array([[0, 17, 255]], np.uint8)
        out = to_gray_u8(g)
        assert out.dtype == np.float64 and out.shape == (1, 3)
        np.testing.assert_array_equal(out, [[0, 17, 255]])
        np.testing.assert_array_equal(to_gray_u8(g[:, :, None]), out)

    def test_bt601_rounded(self):
        rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
        # 76.245 -> 76, 149.685 -> 150, 29.07 -> 29, 2.99 + 11.74 + 3.42 = 18.15 -> 18
        np.testing.assert_array_equal(to_gray_u8(rgb), [[76, 150, 29, 18]])

    def test_equal_channels_pass(self):
        g = np.arange(256, dtype=np.uint8).reshape(16, 16)
        np.testing.assert_array_equal(to_gray_u8(np.stack([g, g, g], axis=2)), g)

    def test_float_unit_range(self):
        x = np.array([[0.0, 0.2, 0.5, 1.0]])
        np.testing.assert_array_equal(to_gray_u8(x), [[0, 51, 128, 255]])  # 127.5 rounds to even 128
        rgb = np.stack([x, x, x], axis=2).astype(np.float32)
        np.testing.assert_array_equal(to_gray_u8(rgb), [[0, 51, 128, 255]])

    def test_noncontiguous(self):
        rgb = np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8)
        view = rgb[:, ::2]
        np.testing.assert_array_equal(to_gray_u8(view), to_gray_u8(np.ascontiguousarray(view)))

    def test_exception(self):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
            to_gray_u8(np.full((4, 4), 200.0))
        with pytest.raises(ValueError, match="gain control"):
            to_gray_u8(np.full((4, 4), 4000, np.uint16))
        with pytest.raises(ShapeError, match="alpha"):
            to_gray_u8(np.zeros((4, 4, 4), np.uint8))
        with pytest.raises(TypeError, match="numpy array"):
            to_gray_u8([[1, 2], [3, 4]])
        with pytest.raises(ValueError, match="NaN"):
            to_gray_u8(np.full((4, 4), np.nan))


# ---------------------------------------------------------------------------------------------
# single-image metrics
# ---------------------------------------------------------------------------------------------


class TestEntropy:
    def test_two_levels_is_one_bit(self):
        assert entropy(np.array([[0, 255], [255, 0]], float)) == pytest.approx(1.0)

    def test_four_levels_two_bits_and_all_levels_eight(self):
        assert entropy(np.array([[1, 2, 3, 4]], float)) == pytest.approx(2.0)
        assert entropy(np.arange(256, dtype=float).reshape(16, 16)) == pytest.approx(8.0)

    def test_rounds_to_levels(self):
        # 0.4 -> 0 and 0.6 -> 1: levels {0, 0, 1, 1}
        assert entropy(np.array([[0.0, 0.4, 0.6, 1.0]])) == pytest.approx(1.0)

    def test_constant_is_zero(self):
        assert _is_pos_zero(entropy(np.full((5, 7), 42.0)))

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"2-D gray image"):
            entropy(np.zeros((2, 3, 3)))
        with pytest.raises(ValueError, match="NaN or infinite"):
            entropy(np.array([[0.0, np.inf]]))


class TestStd:
    def test_population(self):
        assert std(np.array([[0.0, 2.0]])) == pytest.approx(1.0)  # sample SD would be sqrt(2)
        assert std(np.array([[1.0, 2.0, 3.0, 4.0]])) == pytest.approx(math.sqrt(1.25))

    def test_constant(self):
        assert std(np.full((3, 3), 7.0)) == 0.0


class TestSpatialFrequency:
    def test_hand(self):
        f = np.array([[0, 1, 3], [2, 2, 2]], float)
        # dx: (1, 2, 0, 0) -> mean 5/4; dy: (2, 1, -1) -> mean 6/3 = 2
        assert spatial_frequency(f) == pytest.approx(math.sqrt(1.25 + 2.0))

    def test_single_row(self):
        assert spatial_frequency(np.array([[0.0, 3.0, 3.0]])) == pytest.approx(math.sqrt(4.5))

    def test_constant(self):
        assert spatial_frequency(np.full((4, 4), 9.0)) == 0.0


class TestAverageGradient:
    def test_ramp(self):
        f = np.tile(3.0 * np.arange(5), (4, 1))  # Gx = 3 everywhere (borders one-sided), Gy = 0
        assert average_gradient(f) == pytest.approx(3.0 / math.sqrt(2.0))

    def test_borders_one_sided(self):
        # row (0, 1, 4): Gx = (1, (4-0)/2, 3) = (1, 2, 3); single row -> Gy = 0
        assert average_gradient(np.array([[0.0, 1.0, 4.0]])) == pytest.approx(2.0 / math.sqrt(2.0))

    def test_matches_numpy_gradient(self):
        f = _rand((9, 13), seed=3)
        gy, gx = np.gradient(f)
        assert average_gradient(f) == pytest.approx(np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2)))

    def test_noncontiguous(self):
        f = _rand((10, 20), seed=4)
        assert average_gradient(f[:, ::2]) == pytest.approx(average_gradient(f[:, ::2].copy()))

    def test_constant(self):
        assert average_gradient(np.full((3, 4), 5.0)) == 0.0


# ---------------------------------------------------------------------------------------------
# reference-based metrics
# ---------------------------------------------------------------------------------------------


class TestMutualInformation:
    def test_identical_is_twice_entropy_in_nats(self):
        f = _rand((8, 8), seed=5)
        assert mutual_information(f, f, f) == pytest.approx(2 * entropy(f) * math.log(2))

    def test_hand(self):
        f = np.array([[0, 0], [9, 9]], float)
        a = np.array([[0, 9], [0, 9]], float)  # independent of f -> 0
        assert mutual_information(f, a, f) == pytest.approx(math.log(2))

    def test_matches_contingency_formulation(self):
        f, a, b = _rand((6, 7), 1), _rand((6, 7), 2), np.round(_rand((6, 7), 3) / 64)
        assert mutual_information(f, a, b) == pytest.approx(_unique_mi(f, a) + _unique_mi(f, b))

    def test_constant(self):
        f = np.full((4, 4), 3.0)
        assert mutual_information(f, _rand((4, 4)), _rand((4, 4), 1)) == 0.0


class TestCorrelationCoefficient:
    def test_hand(self):
        f = np.array([[1.0, 2.0, 3.0]])
        # r(A, F) = 1; r(B, F): dF = (-1, 0, 1), dB = (1, -1, 0) -> -1 / 2
        assert correlation_coefficient(f, f.copy(), np.array([[3.0, 1.0, 2.0]])) == pytest.approx(0.25)

    def test_constant_gives_zero(self):
        f = np.full((3, 3), 4.0)
        assert correlation_coefficient(f, _rand((3, 3)), _rand((3, 3), 1)) == 0.0
        g = _rand((3, 3), 2)
        assert correlation_coefficient(g, np.full((3, 3), 0.1), g) == pytest.approx(0.5)

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"fused \(2, 2\), ir \(2, 3\), vi \(2, 2\)"):
            correlation_coefficient(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2)))


class TestPSNR:
    def test_hand(self):
        f, a, b = np.full((2, 2), 4.0), np.full((2, 2), 2.0), np.full((2, 2), 4.0)
        # MSE = (4 + 0) / 2 = 2, peak max(F)^2 = 16 -> 10 log10(8)
        assert psnr(f, a, b) == pytest.approx(10 * math.log10(8))

    def test_degenerate_caps(self):
        f = _rand((4, 4))
        assert psnr(f, f, f) == PSNR_CAP_DB == 100.0
        assert psnr(np.zeros((4, 4)), f, f) == -PSNR_CAP_DB


class TestSCD:
    def test_hand(self):
        a, b = np.array([[1.0, 2.0, 3.0]]), np.array([[3.0, 1.0, 2.0]])
        f = np.array([[2.0, 2.0, 5.0]])
        # F-B = (-1, 1, 3): r(A, F-B) = 1; F-A = (1, 0, 2): r(B, F-A) = 1 / 2
        assert scd(f, a, b) == pytest.approx(1.5)

    def test_additive_fusion_is_two(self):
        a, b = np.array([[0.0, 1.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0, 1.0]])
        assert scd(a + b, a, b) == pytest.approx(2.0)

    def test_identity_and_constant(self):
        f = _rand((5, 5))
        assert scd(f, f, f) == 0.0  # F - A and F - B are constant
        assert scd(np.full((5, 5), 1.0), np.full((5, 5), 2.0), f) == 0.0


class TestVIF:
    def test_identity_is_two(self):
        f = _rand((48, 48), smooth=True)
        assert vif(f, f, f) == pytest.approx(2.0, abs=1e-6)

    @pytest.mark.parametrize("shape", [(45, 47), (30, 26)])
    def test_matches_loop_reference(self, shape):
        a, b = _rand(shape, 1, smooth=True), _rand(shape, 2, smooth=True)
        f = np.round((a + b) / 2 + _rand(shape, 3) / 16)
        assert vif_pair(a, f) == pytest.approx(_loop_vif_pair(a, f), rel=1e-9, abs=1e-12)
        assert vif_pair(b, f) == pytest.approx(_loop_vif_pair(b, f), rel=1e-9, abs=1e-12)
        assert vif(f, a, b) == pytest.approx(_loop_vif_pair(a, f) + _loop_vif_pair(b, f), rel=1e-9)

    def test_degenerate(self):
        a = _rand((24, 24), 1, smooth=True)
        const = np.full((24, 24), 90.0)
        assert vif_pair(const, a) == 1.0  # no information in the reference: reference's NaN -> 1
        assert vif_pair(a, const) == 0.0  # nothing of it reaches the fused image
        assert vif(const, const, const) == 2.0
        tiny = _rand((8, 8))  # smaller than every scale's first window
        assert vif(tiny, tiny, tiny) == 2.0

    def test_gain_above_one(self):
        a = _rand((41, 41), 4, smooth=True)
        assert vif_pair(a, 1.5 * a) > 1.0


class TestQabf:
    def test_identity_near_0975(self):
        f = _rand((20, 20), smooth=True)
        value = qabf(f, f, f)
        # Perfect preservation is capped by the sigmoid constants (Qg ~ 0.9994, Qa ~ 0.9759)
        assert 0.974 < value < 0.976
        assert value == pytest.approx(_loop_qabf(f, f, f), rel=1e-12)

    def test_matches_loop_reference(self):
        a, b = _rand((11, 13), 1), _rand((11, 13), 2, smooth=True)
        f = np.round(0.6 * a + 0.4 * b)
        assert qabf(f, a, b) == pytest.approx(_loop_qabf(f, a, b), rel=1e-10)

    def test_symmetric_in_sources(self):
        a, b, f = _rand((9, 9), 1), _rand((9, 9), 2), _rand((9, 9), 3)
        assert qabf(f, a, b) == pytest.approx(qabf(f, b, a))

    def test_degenerate(self):
        z = np.zeros((6, 6))
        assert qabf(_rand((6, 6)), z, z) == 0.0
        c = np.full((6, 6), 100.0)  # zero padding: the border of a constant image is an edge
        assert 0.0 < qabf(c, c, c) < 1.0


class TestSSIM:
    def test_matches_loop_on_9x9(self):
        x, y = _rand((9, 9), 1), _rand((9, 9), 2, smooth=True)
        assert ssim_pair(x, y) == pytest.approx(_loop_ssim(x, y), rel=1e-10)
        assert ssim_pair(x, y, data_range=2.0) == pytest.approx(_loop_ssim(x, y, data_range=2.0), rel=1e-10)

    def test_sum_and_identity(self):
        f, a, b = _rand((12, 10), 1), _rand((12, 10), 2), _rand((12, 10), 3)
        assert ssim(f, a, b) == pytest.approx(ssim_pair(f, a) + ssim_pair(f, b))
        assert ssim(f, f, f) == pytest.approx(2.0)
        assert ssim_pair(f, a) == pytest.approx(ssim_pair(a, f))

    def test_constant(self):
        c1 = (0.01 * 255) ** 2
        x, y = np.full((7, 7), 100.0), np.full((7, 7), 120.0)
        assert ssim_pair(x, y) == pytest.approx((2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1))
        assert ssim_pair(x, x) == 1.0

    def test_exception(self):
        with pytest.raises(ShapeError, match="7×7"):
            ssim_pair(np.zeros((6, 9)), np.zeros((6, 9)))
        with pytest.raises(ShapeError, match="same shape"):
            ssim_pair(np.zeros((7, 9)), np.zeros((9, 7)))


# ---------------------------------------------------------------------------------------------
# the table and its accumulator
# ---------------------------------------------------------------------------------------------


class TestFusionMetrics:
    def test_keys_and_finite(self):
        a, b = _rand((32, 40), 1, smooth=True), _rand((32, 40), 2, smooth=True)
        m = fusion_metrics(np.round((a + b) / 2), a, b, prepare=False)
        assert tuple(m) == FUSION_METRIC_NAMES == (
            "EN", "SD", "SF", "AG", "MI", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM")
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
        assert 0 < m["SSIM"] < 2 and m["MI"] > 0 and 0 < m["CC"] <= 1

    def test_prepare_accepts_uint8_rgb_and_float(self):
        rng = np.random.default_rng(0)
        vi = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        ir = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        fused = vi.astype(np.float32) / 255.0
        m = fusion_metrics(fused, ir, vi)
        assert m == fusion_metrics(to_gray_u8(vi), to_gray_u8(ir), to_gray_u8(vi), prepare=False)
        assert m["PSNR"] != PSNR_CAP_DB and m["SSIM"] > 1.0  # F equals the visible image

    def test_ssim_data_range_passes_through(self):
        a, b = _rand((16, 16), 1, smooth=True), _rand((16, 16), 2, smooth=True)
        f = np.round((a + b) / 2)
        m = fusion_metrics(f, a, b, prepare=False, ssim_data_range=2.0)
        assert m["SSIM"] == pytest.approx(ssim(f, a, b, data_range=2.0))
        assert m["SSIM"] < fusion_metrics(f, a, b, prepare=False)["SSIM"]

    def test_degenerate_constant_inputs(self):
        z = np.zeros((10, 10))
        m = fusion_metrics(z, z, z, prepare=False)
        assert m == {"EN": 0.0, "SD": 0.0, "SF": 0.0, "AG": 0.0, "MI": 0.0, "CC": 0.0, "PSNR": 100.0,
                     "SCD": 0.0, "VIF": 2.0, "Qabf": 0.0, "SSIM": 2.0}
        c = np.full((10, 10), 128, np.uint8)
        m = fusion_metrics(c, c[:, :, None].repeat(3, axis=2), c)
        assert all(math.isfinite(v) for v in m.values())

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"fused \(8, 9\), ir \(8, 8\), vi \(8, 8\)"):
            fusion_metrics(np.zeros((8, 9)), np.zeros((8, 8)), np.zeros((8, 8)), prepare=False)
        with pytest.raises(ShapeError, match="7×7"):
            fusion_metrics(np.zeros((5, 5)), np.zeros((5, 5)), np.zeros((5, 5)), prepare=False)
        with pytest.raises(ValueError, match=r"fusion_metrics: vi: .*must be in \[0, 1\]"):
            fusion_metrics(np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), 3.0))


class TestFusionMetricAccumulator:
    def test_mean_and_reset(self):
        acc = FusionMetricAccumulator()
        acc.update({"EN": 6.0, "SD": 40.0})
        acc.update({"SD": 42.0, "EN": 7.0})
        assert acc.count == 2 and acc.compute() == {"EN": 6.5, "SD": 41.0}
        acc.reset()
        assert acc.count == 0
        with pytest.raises(ValueError, match="no image was added"):
            acc.compute()

    def test_exception(self):
        acc = FusionMetricAccumulator()
        acc.update({"EN": 6.0, "SD": 40.0})
        with pytest.raises(KeyError, match=r"missing \['SD'\], unexpected \['SF'\]"):
            acc.update({"EN": 6.0, "SF": 1.0})
        with pytest.raises(ValueError, match="'EN' is not finite"):
            acc.update({"EN": float("nan"), "SD": 1.0})


@pytest.mark.realdata
def test_realdata_roadscene_mean_fusion():
    root = SHARED_DATA / "roadscene"
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (it sits beside the repository in CI)")
    from ivf_perception.io.image_files import read_image

    stems = sorted(p.stem for p in (root / "ir").glob("*.jpg"))[:3]
    assert stems, f"no RoadScene images in {root / 'ir'}"
    for stem in stems:
        ir = to_gray_u8(read_image(root / "ir" / f"{stem}.jpg"))
        vi = to_gray_u8(read_image(root / "vi" / f"{stem}.jpg"))
        fused = np.round((ir + vi) / 2)
        m = fusion_metrics(fused, ir, vi, prepare=False)
        assert all(math.isfinite(v) for v in m.values()), m
        assert 0 < m["SSIM"] < 2 and m["MI"] > 0 and 0 < m["EN"] <= 8
        assert 0 < m["CC"] <= 1 and 0 < m["VIF"] < 2 and 0 < m["Qabf"] < 1
        # averaging smooths: the fused image is no sharper than the sharper source
        assert m["SF"] <= max(spatial_frequency(ir), spatial_frequency(vi))
        assert m["SSIM"] > ssim(np.full_like(fused, fused.mean()), ir, vi)
