"""Thermal-to-RGB registration by homography, and resizing."""

from __future__ import annotations

import numpy as np
import pytest

from ivf_perception.io import HomographyError, IVFIOError, resize_to, validate_homography, warp_thermal


def dot_image(height=40, width=50, x=10, y=20, dtype=np.float32):
    img = np.zeros((height, width), dtype)
    img[y, x] = 1 if dtype == np.float32 else 200
    return img


class TestWarpThermal:
    def test_identity_is_a_no_op(self):
        img = dot_image()
        assert warp_thermal(img, np.eye(3)) is img
        assert warp_thermal(img, np.eye(3) * 2.5, out_size=img.shape) is img
        assert warp_thermal(img, [1, 0, 0, 0, 1, 0, 0, 0, 1]) is img

    def test_identity_to_another_size_crops_and_pads(self):
        img = dot_image()
        out = warp_thermal(img, np.eye(3), out_size=(30, 60))
        assert out.shape == (30, 60)
        assert out[20, 10] == 1.0
        np.testing.assert_array_equal(out[:, 50:], 0.0)  # no thermal pixel there: border value

    @pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
    def test_translation_moves_a_dot(self, dtype):
        img = dot_image(dtype=dtype)
        h = [[1, 0, 5], [0, 1, 3], [0, 0, 1]]  # thermal (x, y) -> rgb (x + 5, y + 3)
        out = warp_thermal(img, h, out_size=(40, 50))
        assert out.dtype == dtype and out.shape == (40, 50)
        ys, xs = np.nonzero(out)
        assert (ys.tolist(), xs.tolist()) == ([23], [15])
        assert out[23, 15] == img[20, 10]

    def test_flat_list_and_scale(self):
        img = dot_image(x=10, y=10)
        out = warp_thermal(img, [2, 0, 0, 0, 2, 0, 0, 0, 1], out_size=(80, 100), interpolation="nearest")
        assert out[20, 20] == 1.0

    def test_channels_preserved(self):
        img = np.dstack([dot_image()] * 3)
        assert warp_thermal(img, np.diag([1.0, 1.0, 1.0]) + np.eye(3, k=2)).shape == (40, 50, 3)
        one = dot_image()[:, :, None]
        assert warp_thermal(one, [[1, 0, 1], [0, 1, 0], [0, 0, 1]]).shape == (40, 50, 1)

    @pytest.mark.parametrize(
        "matrix, message",
        [
            (np.eye(2), r"shape \(3, 3\) or 9 elements"),
            ([1, 0, 0, 0, 1, 0, 0, 0], r"got shape \(8,\)"),
            ([[1, 0, 0], [0, np.nan, 0], [0, 0, 1]], "NaN or infinite"),
            (np.zeros((3, 3)), "singular"),
            ([[1, 2, 3], [2, 4, 6], [0, 0, 1]], "singular"),
            ([["a", 0, 0], [0, 1, 0], [0, 0, 1]], "must be 9 numbers"),
        ],
    )
    def test_bad_matrices_raise(self, matrix, message):
        with pytest.raises(HomographyError, match=message):
            warp_thermal(dot_image(), matrix)
        with pytest.raises(ValueError):  # HomographyError is a ValueError
            validate_homography(matrix)

    def test_bad_arguments(self):
        with pytest.raises(IVFIOError, match=r"out_size must be positive"):
            warp_thermal(dot_image(), np.eye(3), out_size=(0, 10))
        with pytest.raises(IVFIOError, match="unknown interpolation 'bilinear'"):
            warp_thermal(dot_image(), np.eye(3), interpolation="bilinear")
        with pytest.raises(IVFIOError, match="dtype bool"):
            warp_thermal(np.zeros((4, 4), bool), np.eye(3))
        with pytest.raises(TypeError, match="numpy array"):
            warp_thermal([[0.0]], np.eye(3))

    def test_validate_returns_3x3(self):
        mat = validate_homography((1, 0, 4, 0, 1, 5, 0.001, 0, 1))
        assert mat.shape == (3, 3) and mat.dtype == np.float64
        assert mat[0, 2] == 4 and mat[2, 0] == 0.001


class TestResizeTo:
    def test_shapes_and_same_size(self):
        img = np.zeros((40, 50, 3), np.uint8)
        assert resize_to(img, (20, 25)).shape == (20, 25, 3)
        assert resize_to(img, (81, 99)).shape == (81, 99, 3)
        assert resize_to(img, (40, 50)) is img
        assert resize_to(np.zeros((4, 6, 1), np.float32), (8, 12)).shape == (8, 12, 1)

    def test_nearest_keeps_label_values(self):
        labels = np.random.default_rng(0).integers(0, 9, (24, 32)).astype(np.uint8)
        out = resize_to(labels, (37, 41), interpolation="nearest")
        assert set(np.unique(out)) <= set(np.unique(labels))

    def test_exception(self):
        with pytest.raises(IVFIOError, match=r"size must be \(height, width\)"):
            resize_to(np.zeros((4, 4), np.uint8), 8)
        with pytest.raises(IVFIOError, match=r"\(H, W\) or \(H, W, C\)"):
            resize_to(np.zeros((2, 4, 4, 4), np.uint8), (8, 8))
