"""``sensor_msgs/CompressedImage`` decoding (issue 14 part 2): JPEG/PNG, 16-bit PNG thermal kept as
raw counts, image_transport compressedDepth, and corrupt or truncated data refused with the
package's own error (which the node counts as a skipped frame)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ivf_perception.io import decode_rgb, decode_thermal
from ivf_perception.io.errors import ImageDecodeError
from ivf_perception.io.image_codec import compressed_to_numpy, is_compressed

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy sensor_msgs wheels not installed")


def _compressed(array: np.ndarray, ext: str, fmt: str) -> object:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return sensor_msgs.CompressedImage(format=fmt, data=buf.tobytes())


def test_png_rgb_and_jpeg_decode_to_rgb_order() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)
    png = _compressed(rgb[:, :, ::-1], ".png", "rgb8; png compressed bgr8")
    assert is_compressed(png) and not is_compressed(sensor_msgs.Image())
    np.testing.assert_array_equal(decode_rgb(png), rgb)  # lossless: exact, and RGB order restored
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[:, :, 0] = 200  # pure red
    jpeg = decode_rgb(_compressed(smooth[:, :, ::-1], ".jpg", "bgr8; jpeg compressed bgr8"))
    assert jpeg.shape == (32, 32, 3) and np.abs(jpeg.astype(int) - smooth).max() <= 3
    gray = decode_rgb(_compressed(rgb[:, :, 0], ".png", "mono8; png compressed mono8"))
    assert gray.shape == (24, 32, 3) and (gray[:, :, 1] == rgb[:, :, 0]).all()


def test_16_bit_png_thermal_stays_raw_counts() -> None:
    counts = np.random.default_rng(1).integers(20_000, 30_000, (24, 32), np.uint16)
    got = decode_thermal(_compressed(counts, ".png", "mono16; png compressed mono16"))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, counts)
    ok, buf = cv2.imencode(".png", counts)
    depth = sensor_msgs.CompressedImage(format="16UC1; compressedDepth png", data=bytes(12) + buf.tobytes())
    np.testing.assert_array_equal(compressed_to_numpy(depth), counts)


@pytest.mark.parametrize("cut", ["empty", "truncated", "garbage"])
def test_corrupt_or_truncated_data_raises_the_decode_error(cut: str) -> None:
    ok, buf = cv2.imencode(".png", np.zeros((16, 16), np.uint16))
    data = {"empty": b"", "truncated": buf.tobytes()[:30], "garbage": b"\x89PNGnot an image at all"}[cut]
    with pytest.raises(ImageDecodeError, match="compressed image"):
        decode_thermal(sensor_msgs.CompressedImage(format="mono16; png compressed mono16", data=data))
