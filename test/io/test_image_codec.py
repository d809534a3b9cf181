"""sensor_msgs/Image <-> numpy codec, for rclpy and rosbags messages, plus CDR interoperability."""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest

from ivf_perception.io import (
    SUPPORTED_ENCODINGS,
    BagFrame,
    ImageDecodeError,
    ImageEncodeError,
    UnsupportedEncodingError,
    decode_rgb,
    decode_thermal,
    encoding_info,
    get_typestore,
    header_stamp_ns,
    image_to_numpy,
    make_header,
    numpy_to_image,
    read_image_messages,
    to_rgb,
    write_image_bag,
)

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy sensor_msgs wheels not installed")
rclpy_serialization = pytest.importorskip("rclpy.serialization")
Image = sensor_msgs.Image
MSGTYPE = "sensor_msgs/msg/Image"


@pytest.fixture(scope="module")
def typestore():
    return get_typestore("kilted")


@pytest.fixture(scope="module")
def rb_image(typestore):
    return typestore.types[MSGTYPE]


def sample(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    """A random image for an encoding, with values that expose byte-order and channel mix-ups."""
    info = encoding_info(encoding)
    rng = np.random.default_rng(seed)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    high = 256 if info.dtype == np.uint8 else 65536
    return rng.integers(0, high, size=shape).astype(info.dtype)


class TestRoundTrip:
    @pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
    def test_rclpy(self, encoding):
        arr = sample(encoding)
        msg = numpy_to_image(arr, encoding)
        assert isinstance(msg, Image)
        info = encoding_info(encoding)
        assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
        assert msg.step == 7 * info.bytes_per_pixel
        assert len(msg.data) == msg.step * msg.height
        out = image_to_numpy(msg)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)

    @pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
    def test_rosbags(self, encoding, rb_image):
        arr = sample(encoding, seed=1)
        msg = numpy_to_image(arr, encoding, msg_type=rb_image)
        assert isinstance(msg, rb_image)
        assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
        np.testing.assert_array_equal(image_to_numpy(msg), arr)

    def test_decoded_array_is_independent_of_message(self):
        arr = sample("rgb8")
        msg = numpy_to_image(arr, "rgb8")
        out = image_to_numpy(msg)
        assert out.flags.writeable and out.flags.c_contiguous
        out[:] = 0
        np.testing.assert_array_equal(image_to_numpy(msg), arr)

    def test_hxwx1_mono_accepted(self):
        arr = sample("mono8")[:, :, None]
        np.testing.assert_array_equal(image_to_numpy(numpy_to_image(arr, "mono8")), arr[:, :, 0])

    def test_noncontiguous_input(self):
        arr = sample("rgb8", 10, 14)[::2, ::2]
        assert not arr.flags.c_contiguous
        np.testing.assert_array_equal(image_to_numpy(numpy_to_image(arr, "rgb8")), arr)

    def test_little_endian_wire_format(self):
        arr = np.array([[0x0102, 0xA0B0]], np.uint16)
        msg = numpy_to_image(arr, "mono16")
        assert bytes(msg.data) == bytes([0x02, 0x01, 0xB0, 0xA0])

    def test_encoding_lookup_is_case_insensitive(self):
        arr = sample("mono8")
        msg = numpy_to_image(arr, "MONO8")
        assert msg.encoding == "mono8"


def raw_message(encoding, arr, step, *, bigendian=False, data_kind="bytes", pad=0xEE):
    """A hand-made Image whose rows are padded to ``step`` bytes."""
    info = encoding_info(encoding)
    height, width = arr.shape[:2]
    wire = arr.astype(">u2" if bigendian else "<u2") if info.dtype == np.uint16 else arr
    rows = np.ascontiguousarray(wire).view(np.uint8).reshape(height, -1)
    padded = np.full((height, step), pad, np.uint8)
    padded[:, : rows.shape[1]] = rows
    payload = padded.tobytes()
    data = {
        "bytes": payload,
        "array": array.array("B", payload),
        "list": list(payload),
        "numpy": np.frombuffer(payload, np.uint8).copy(),
    }[data_kind]
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian), step=step)
    msg.data = array.array("B", payload)

    class Duck:  # plain object: data as given (bytes, list, numpy) to exercise duck typing
        pass

    duck = Duck()
    for name in ("height", "width", "encoding", "is_bigendian", "step"):
        setattr(duck, name, getattr(msg, name))
    duck.data = data
    return msg, duck


class TestLayout:
    @pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8", "mono16", "16UC1"])
    @pytest.mark.parametrize("data_kind", ["bytes", "array", "list", "numpy"])
    def test_row_padding(self, encoding, data_kind):
        arr = sample(encoding, 4, 5, seed=3)
        row = 5 * encoding_info(encoding).bytes_per_pixel
        msg, duck = raw_message(encoding, arr, row + 6, data_kind=data_kind)
        np.testing.assert_array_equal(image_to_numpy(msg), arr)
        np.testing.assert_array_equal(image_to_numpy(duck), arr)

    def test_row_padding_rosbags(self, rb_image):
        arr = sample("rgb8", 3, 4)
        _, duck = raw_message("rgb8", arr, 16, data_kind="numpy")
        msg = rb_image(
            header=make_header(0, "", rb_image), height=3, width=4, encoding="rgb8",
            is_bigendian=0, step=16, data=duck.data,
        )
        np.testing.assert_array_equal(image_to_numpy(msg), arr)

    @pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
    def test_big_endian_16bit(self, encoding):
        arr = np.array([[0x0102, 0xFF00, 0x00FF], [1, 65535, 4660]], np.uint16)
        msg, duck = raw_message(encoding, arr, 6, bigendian=True)
        assert bytes(msg.data)[:2] == b"\x01\x02"
        out = image_to_numpy(msg)
        assert out.dtype == np.uint16 and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)
        np.testing.assert_array_equal(image_to_numpy(duck), arr)

    def test_big_endian_with_padding(self):
        arr = sample("mono16", 3, 3, seed=9)
        msg, _ = raw_message("mono16", arr, 10, bigendian=True)
        np.testing.assert_array_equal(image_to_numpy(msg), arr)

    def test_big_endian_flag_ignored_for_8bit(self):
        arr = sample("rgb8", 2, 2)
        msg, _ = raw_message("rgb8", arr, 6, bigendian=True)
        np.testing.assert_array_equal(image_to_numpy(msg), arr)

    def test_longer_data_than_needed_is_accepted(self):
        arr = sample("mono8", 2, 3)
        duck = raw_message("mono8", arr, 3)[1]
        duck.data = duck.data + b"\x00" * 5
        np.testing.assert_array_equal(image_to_numpy(duck), arr)


class TestExceptions:
    def test_unsupported_encoding(self):
        msg = Image(height=2, width=2, encoding="bayer_rggb8", step=2)
        msg.data = array.array("B", bytes(4))
        with pytest.raises(UnsupportedEncodingError, match="unsupported image encoding 'bayer_rggb8'") as exc:
            image_to_numpy(msg)
        for name in SUPPORTED_ENCODINGS:
            assert name in str(exc.value)
        assert isinstance(exc.value, ValueError)
        with pytest.raises(UnsupportedEncodingError, match="supported encodings: rgb8"):
            numpy_to_image(np.zeros((2, 2), np.uint8), "32FC1")

    def test_short_data(self):
        msg = Image(height=4, width=3, encoding="rgb8", step=9)
        msg.data = array.array("B", bytes(35))
        with pytest.raises(ImageDecodeError, match=r"has 35 B, expected at least step\*height = 9\*4 = 36 B"):
            image_to_numpy(msg)

    def test_step_too_small(self):
        msg = Image(height=2, width=3, encoding="mono16", step=5)
        msg.data = array.array("B", bytes(10))
        with pytest.raises(ImageDecodeError, match=r"step 5 is smaller than one row of 3 px x 2 B \(mono16\) = 6 B"):
            image_to_numpy(msg)

    def test_zero_size(self):
        with pytest.raises(ImageDecodeError, match="zero size"):
            image_to_numpy(Image(encoding="rgb8"))

    def test_not_an_image(self):
        with pytest.raises(TypeError, match="lacks .*step, data"):
            image_to_numpy(object())

    def test_bad_data_values(self):
        _, duck = raw_message("mono8", sample("mono8", 1, 2), 2)
        duck.data = [1, 300]
        with pytest.raises(ImageDecodeError, match="byte values 0..255"):
            image_to_numpy(duck)
        duck.data = np.array([1, 2], np.int32)
        with pytest.raises(ImageDecodeError, match="dtype uint8, got int32"):
            image_to_numpy(duck)

    def test_encode_dtype_mismatch(self):
        with pytest.raises(ImageEncodeError, match="encoding rgb8 needs dtype uint8, got float32"):
            numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
        with pytest.raises(ImageEncodeError, match="encoding mono16 needs dtype uint16, got uint8"):
            numpy_to_image(np.zeros((2, 2), np.uint8), "mono16")

    def test_encode_channel_mismatch(self):
        with pytest.raises(ImageEncodeError, match=r"needs an array of shape \(H, W, 4\), got \(2, 2, 3\)"):
            numpy_to_image(np.zeros((2, 2, 3), np.uint8), "rgba8")
        with pytest.raises(ImageEncodeError, match=r"\(H, W\) or \(H, W, 1\)"):
            numpy_to_image(np.zeros((2, 2, 3), np.uint8), "mono8")

    def test_encode_empty(self):
        with pytest.raises(ImageEncodeError, match="empty image"):
            numpy_to_image(np.zeros((0, 4), np.uint8), "mono8")

    def test_encode_not_array(self):
        with pytest.raises(TypeError, match="expected a numpy array"):
            numpy_to_image([[1, 2]], "mono8")

    def test_header_not_a_header(self):
        with pytest.raises(TypeError, match=r"header must be a std_msgs/Header .*make_header"):
            numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", header="camera")


class TestHeaders:
    def test_rclpy_header(self):
        header = make_header(1_700_000_000_123_456_789, "camera")
        msg = numpy_to_image(sample("mono8"), "mono8", header=header)
        assert msg.header.frame_id == "camera"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
        assert header_stamp_ns(msg) == 1_700_000_000_123_456_789

    def test_rosbags_header(self, rb_image):
        msg = numpy_to_image(sample("mono8"), "mono8", make_header(42, "th", rb_image), rb_image)
        assert header_stamp_ns(msg) == 42 and msg.header.frame_id == "th"

    def test_header_from_the_other_family_is_converted(self, rb_image):
        """Outputs copy input headers: a rosbags header on an rclpy message and vice versa."""
        rclpy_msg = numpy_to_image(sample("mono8"), "mono8", header=make_header(5, "x", rb_image))
        assert isinstance(rclpy_msg.header, type(make_header()))
        assert header_stamp_ns(rclpy_msg) == 5 and rclpy_msg.header.frame_id == "x"
        rb_msg = numpy_to_image(sample("mono8"), "mono8", header=rclpy_msg.header, msg_type=rb_image)
        assert header_stamp_ns(rb_msg) == 5 and rb_msg.header.frame_id == "x"

    def test_default_header(self, rb_image):
        assert header_stamp_ns(numpy_to_image(sample("mono8"), "mono8")) == 0
        assert header_stamp_ns(numpy_to_image(sample("mono8"), "mono8", msg_type=rb_image)) == 0

    def test_negative_stamp(self):
        with pytest.raises(ValueError, match="stamp_ns must be an integer >= 0"):
            make_header(-1)


class TestConversions:
    def test_to_rgb_orders(self):
        rgb = sample("rgb8", seed=4)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
        np.testing.assert_array_equal(to_rgb(rgb, "rgb8"), rgb)
        np.testing.assert_array_equal(to_rgb(bgr, "bgr8"), rgb)
        np.testing.assert_array_equal(to_rgb(bgr, "8UC3"), rgb)
        np.testing.assert_array_equal(to_rgb(np.concatenate([rgb, alpha], 2), "rgba8"), rgb)
        np.testing.assert_array_equal(to_rgb(np.concatenate([bgr, alpha], 2), "bgra8"), rgb)

    def test_to_rgb_gray(self):
        gray = sample("mono8")
        out = to_rgb(gray, "mono8")
        assert out.shape == gray.shape + (3,) and out.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)
        with pytest.raises(ImageDecodeError, match="raw 16-bit counts, which have no fixed RGB form"):
            to_rgb(sample("mono16"), "16UC1")  # gain control is the engine's (test/engine)

    def test_decode_rgb_reorders_and_keeps_16_bit_raw(self):
        rgb = sample("rgb8", seed=6)
        for encoding, image in (("rgb8", rgb), ("bgr8", rgb[:, :, ::-1]),
                                ("rgba8", np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]))):
            np.testing.assert_array_equal(decode_rgb(numpy_to_image(np.ascontiguousarray(image), encoding)), rgb)
        gray = sample("mono8", seed=7)
        np.testing.assert_array_equal(decode_rgb(numpy_to_image(gray, "mono8")), np.dstack([gray] * 3))
        raw = sample("mono16", seed=8)
        out = decode_rgb(numpy_to_image(raw, "mono16"))
        assert out.dtype == np.uint16 and out.shape == raw.shape
        np.testing.assert_array_equal(out, raw)

    def test_decode_thermal_leaves_counts_raw(self):
        for encoding in ("mono8", "8UC1", "mono16", "16UC1"):
            raw = sample(encoding, seed=9)
            out = decode_thermal(numpy_to_image(raw, encoding))
            assert out.dtype == raw.dtype and out.shape == raw.shape[:2]
            np.testing.assert_array_equal(out, raw.reshape(out.shape))
        colour = sample("rgb8", seed=10)
        bgr = np.ascontiguousarray(colour[:, :, ::-1])
        np.testing.assert_array_equal(decode_thermal(numpy_to_image(bgr, "bgr8")), colour)

    def test_conversion_validates(self):
        with pytest.raises(ImageDecodeError, match="needs dtype uint16"):
            to_rgb(np.zeros((2, 2), np.uint8), "mono16")


class TestSerialization:
    """Bytes written by rosbags decode with rclpy's serializer and vice versa."""

    def test_rosbags_cdr_to_rclpy(self, typestore, rb_image):
        for encoding in SUPPORTED_ENCODINGS:
            arr = sample(encoding, 6, 9, seed=5)
            msg = numpy_to_image(arr, encoding, make_header(7, "f", rb_image), rb_image)
            raw = typestore.serialize_cdr(msg, MSGTYPE)
            via_rclpy = rclpy_serialization.deserialize_message(bytes(raw), Image)
            via_rosbags = typestore.deserialize_cdr(raw, MSGTYPE)
            np.testing.assert_array_equal(image_to_numpy(via_rclpy), arr)
            np.testing.assert_array_equal(image_to_numpy(via_rosbags), arr)
            assert header_stamp_ns(via_rclpy) == 7

    def test_rclpy_cdr_to_rosbags(self, typestore):
        for encoding in SUPPORTED_ENCODINGS:
            arr = sample(encoding, 6, 9, seed=6)
            raw = rclpy_serialization.serialize_message(numpy_to_image(arr, encoding, make_header(9, "g")))
            decoded = typestore.deserialize_cdr(raw, MSGTYPE)
            np.testing.assert_array_equal(image_to_numpy(decoded), arr)
            assert decoded.header.frame_id == "g"

    def test_bag_round_trip_both_serializers(self, tmp_path, typestore):
        from rosbags.rosbag2 import Reader, StoragePlugin, Writer

        arrays = {enc: sample(enc, 8, 6, seed=i) for i, enc in enumerate(SUPPORTED_ENCODINGS)}
        frames = [
            BagFrame(f"/img/{enc}", 1_000 + i, f"frame_{i}", arr, enc)
            for i, (enc, arr) in enumerate(arrays.items())
        ]
        bag = write_image_bag(tmp_path / "ours", frames)
        # our reader (rosbags deserialize_cdr)
        seen = {}
        for topic, stamp, msg in read_image_messages(bag):
            seen[topic] = image_to_numpy(msg)
            assert header_stamp_ns(msg) == stamp
        # the same raw bytes through rclpy's deserializer
        with Reader(bag) as reader:
            for conn, _, raw in reader.messages():
                via_rclpy = image_to_numpy(rclpy_serialization.deserialize_message(raw, Image))
                np.testing.assert_array_equal(via_rclpy, seen[conn.topic])
        for enc, arr in arrays.items():
            np.testing.assert_array_equal(seen[f"/img/{enc}"], arr)
        # and a bag whose payload was serialized by rclpy reads back identically
        other = tmp_path / "rclpy_written"
        with Writer(other, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {}
            for frame in frames:
                conns[frame.topic] = writer.add_connection(frame.topic, MSGTYPE, typestore=typestore)
                msg = numpy_to_image(frame.array, frame.encoding, make_header(frame.stamp_ns, frame.frame_id))
                writer.write(conns[frame.topic], frame.stamp_ns, rclpy_serialization.serialize_message(msg))
        for topic, _, msg in read_image_messages(other):
            np.testing.assert_array_equal(image_to_numpy(msg), seen[topic])


@pytest.mark.parametrize(("encoding", "channels", "dtype"), [
    ("rgb8", 3, np.uint8), ("bgr8", 3, np.uint8), ("rgba8", 4, np.uint8), ("bgra8", 4, np.uint8),
    ("mono8", 1, np.uint8), ("mono16", 1, np.uint16), ("16UC1", 1, np.uint16)])
@pytest.mark.parametrize(("height", "width", "padding"), [(5, 7, 3), (4, 6, 0), (1, 1, 1), (3, 5, 2)])
def test_zero_copy_decode_with_row_padding_and_odd_sizes(encoding, channels, dtype, height, width, padding) -> None:
    """copy=False views the message buffer (padding skipped by strides) and decodes the same pixels."""
    rng = np.random.default_rng(height * 100 + width + padding)
    img = rng.integers(0, np.iinfo(dtype).max + 1, (height, width, channels)).astype(dtype)
    row = img.astype(np.dtype(dtype).newbyteorder("<")).reshape(height, -1).view(np.uint8)
    buf = np.zeros((height, row.shape[1] + padding), np.uint8)
    buf[:, :row.shape[1]] = row
    msg = SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=0, step=buf.shape[1],
                          data=array.array("B", buf.tobytes()))
    decode = decode_thermal if channels == 1 else decode_rgb
    viewed, copied = decode(msg, copy=False), decode(msg)
    expected = {"rgb8": img, "bgr8": img[..., ::-1], "rgba8": img[..., :3], "bgra8": img[..., 2::-1]}.get(
        encoding, img[..., 0])
    np.testing.assert_array_equal(viewed, expected)
    np.testing.assert_array_equal(copied, expected)
    assert not np.shares_memory(copied, np.frombuffer(msg.data, np.uint8))
    if encoding in ("rgb8", "mono8", "mono16", "16UC1") and (padding == 0 or channels == 1):
        assert np.shares_memory(viewed, np.frombuffer(msg.data, np.uint8))


def test_zero_copy_decode_of_big_endian_mono16_converts() -> None:
    raw = np.array([[1, 258], [4096, 65535]], np.uint16)
    msg = SimpleNamespace(height=2, width=2, encoding="mono16", is_bigendian=1, step=4,
                          data=raw.astype(">u2").tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg, copy=False), raw)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("height", "5", r"Image.height must be an integer, got str '5'"),
    ("width", None, r"Image.width must be an integer, got NoneType None"),
    ("step", 7.5, r"Image.step must be an integer, got float 7.5"),
    ("height", True, r"Image.height must be an integer, got bool True"),
    ("is_bigendian", 2, r"Image.is_bigendian must be 0 or 1, got 2"),
    ("is_bigendian", "no", r"Image.is_bigendian must be 0 or 1, got 'no'"),
    ("encoding", None, r"image encoding must be a string such as 'rgb8', got NoneType"),
    ("encoding", "bayer_rggb8", r"unsupported image encoding 'bayer_rggb8'"),
    ("data", None, r"Image.data must be bytes"),
    ("data", "text", r"Image.data must hold byte values 0..255"),
])
def test_every_bad_image_field_raises_the_codecs_error(field: str, value, message: str) -> None:
    """Probing found TypeErrors and bare ValueErrors escaping the codec (a node logged tracebacks)."""
    from ivf_perception.io import ImageDecodeError, IVFIOError

    _, msg = raw_message("mono8", sample("mono8", 5, 7), 7)  # the plain object: rclpy would refuse the set
    setattr(msg, field, value)
    with pytest.raises(ImageDecodeError, match=message) as err:
        image_to_numpy(msg)
    assert isinstance(err.value, IVFIOError)


@pytest.mark.parametrize(("stamp", "message"), [
    (SimpleNamespace(sec=None, nanosec=0), r"header stamp.sec must be an integer, got None"),
    (SimpleNamespace(sec=1, nanosec=2_000_000_000), r"header stamp.nanosec must be in \[0, 1e9\), got 2000000000"),
    (SimpleNamespace(sec=1), r"header stamp.nanosec must be an integer, got None"),
])
def test_bad_header_stamps_raise_the_codecs_error(stamp, message: str) -> None:
    from ivf_perception.io import ImageFieldError, header_stamp_ns

    with pytest.raises(ImageFieldError, match=message):
        header_stamp_ns(SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id="cam")))


def test_bad_encode_arguments_raise_the_codecs_error() -> None:
    from ivf_perception.io import ImageEncodeError, ImageFieldError, make_header

    for bad in (-1, 1.5, "0", True):
        with pytest.raises(ImageFieldError, match=r"stamp_ns must be an integer >= 0"):
            make_header(bad)
    with pytest.raises(ImageEncodeError, match="expected a numpy array"):
        numpy_to_image([[1, 2]], "mono8")
    header = SimpleNamespace(stamp=SimpleNamespace(sec="x", nanosec=0), frame_id="cam")
    with pytest.raises(ImageEncodeError, match="header must be a std_msgs/Header"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", header=header)
