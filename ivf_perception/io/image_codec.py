"""``sensor_msgs/Image`` <-> numpy, for rclpy messages and rosbags messages alike.

Why our own codec: cv_bridge is not on PyPI for ROS 2 and scales 16-bit thermal with a fixed
factor; rclpy and rosbags messages have the same fields but different Python types for ``data``
(``array.array`` vs ``numpy.ndarray``). One implementation, duck-typed on the fields ``height``,
``width``, ``encoding``, ``is_bigendian``, ``step`` and ``data``, serves the live node, bag replay
and tools, so they cannot disagree.

Conventions:

- :func:`image_to_numpy` keeps the message's channel order (``bgr8`` stays BGR). Mono
  encodings decode to ``(H, W)``, colour to ``(H, W, C)``.
- Engine inputs come from :func:`decode_rgb` / :func:`decode_thermal`, which only reorder
  channels: 16-bit images stay raw counts, and gain control, registration and validation are the
  Engine's pre-processing (DESIGN §1: one pipeline for node and replay).
- ``8UC1`` is treated as ``mono8``, and ``8UC3`` as ``bgr8`` (OpenCV's channel order, which is what
  cv_bridge and OpenCV-based drivers put in such messages).
- ``step`` may exceed ``width * bytes_per_pixel`` (row padding); padding is dropped.
- 16-bit data honours ``is_bigendian``; decoded arrays are native-endian ``uint16``.
- Encoded messages are tightly packed (``step = width * bytes_per_pixel``), little-endian
  (``is_bigendian = 0``).
"""

from __future__ import annotations

import array as _array
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import ImageDecodeError, ImageEncodeError, ImageFieldError, UnsupportedEncodingError

__all__ = [
    "EncodingInfo",
    "ENCODINGS",
    "SUPPORTED_ENCODINGS",
    "encoding_info",
    "image_to_numpy",
    "numpy_to_image",
    "make_header",
    "stamp_to_ns",
    "header_stamp_ns",
    "to_rgb",
    "decode_rgb",
    "decode_thermal",
    "is_compressed",
    "compressed_to_numpy",
    "compressed_encoding",
    "message_encoding",
]


@dataclass(frozen=True)
class EncodingInfo:
    """What an encoding string means for the pixel layout.

    Attributes:
        name: canonical ROS encoding name.
        channels: channels per pixel.
        dtype: numpy dtype of one channel (uint8 or uint16).
        order: channel order: ``"gray"``, ``"rgb"``, ``"bgr"``, ``"rgba"`` or ``"bgra"``.
    """

    name: str
    channels: int
    dtype: np.dtype
    order: str

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes of one pixel (all channels)."""
        return self.channels * self.dtype.itemsize


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)

ENCODINGS: dict[str, EncodingInfo] = {
    info.name: info
    for info in (
        EncodingInfo("rgb8", 3, _U8, "rgb"),
        EncodingInfo("bgr8", 3, _U8, "bgr"),
        EncodingInfo("rgba8", 4, _U8, "rgba"),
        EncodingInfo("bgra8", 4, _U8, "bgra"),
        EncodingInfo("mono8", 1, _U8, "gray"),
        EncodingInfo("mono16", 1, _U16, "gray"),
        EncodingInfo("8UC1", 1, _U8, "gray"),
        EncodingInfo("8UC3", 3, _U8, "bgr"),
        EncodingInfo("16UC1", 1, _U16, "gray"),
    )
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)
_BY_LOWER = {name.lower(): info for name, info in ENCODINGS.items()}
_MSG_FIELDS = ("height", "width", "encoding", "is_bigendian", "step", "data")


def encoding_info(encoding: str) -> EncodingInfo:
    """Look up an encoding (case-insensitive: ``"MONO8"`` and ``"8uc1"`` are accepted).

    Raises:
        UnsupportedEncodingError: naming the encoding and listing the supported ones.
    """
    if not isinstance(encoding, str):
        raise UnsupportedEncodingError(
            f"image encoding must be a string such as 'rgb8', got {type(encoding).__name__}"
        )
    info = _BY_LOWER.get(encoding.strip().lower())
    if info is None:
        raise UnsupportedEncodingError(
            f"unsupported image encoding {encoding!r}; supported encodings: "
            f"{', '.join(SUPPORTED_ENCODINGS)}. Convert the image upstream (e.g. an "
            "image_proc/debayer node for bayer_* encodings) or publish one of these."
        )
    return info


def _data_as_uint8(data: Any) -> np.ndarray:
    """View the message's ``data`` field as a flat uint8 array without copying where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(
                f"Image.data as a numpy array must have dtype uint8, got {data.dtype}; "
                "pass the raw byte buffer (e.g. data.view(np.uint8))"
            )
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, _array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, Sequence):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (OverflowError, ValueError, TypeError) as exc:
            raise ImageDecodeError(
                f"Image.data must hold byte values 0..255; converting a {type(data).__name__} "
                f"failed: {exc}"
            ) from exc
    raise ImageDecodeError(
        "Image.data must be bytes, bytearray, array.array('B'), a list of ints or a uint8 numpy "
        f"array, got {type(data).__name__}"
    )


def image_to_numpy(msg: Any, *, copy: bool = True) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` (rclpy or rosbags object) into a numpy array.

    Args:
        msg: any object with the fields ``height``, ``width``, ``encoding``, ``is_bigendian``,
            ``step`` and ``data`` (bytes, array.array, list of ints or uint8 numpy array).
        copy: True (default): a new, writable, C-contiguous array that never aliases the
            message. False: a view of the message's buffer wherever the layout allows (8-bit
            data; 16-bit data in native byte order), with row padding skipped by strides, so
            it may be non-contiguous, and read-only when the buffer is (``bytes``). Only for a
            caller that owns the message and does not write to the array (the live node: a
            480x640 rgb8 frame is then not copied before the engine reads it).

    Returns:
        ``(H, W)`` for mono encodings, ``(H, W, C)`` for colour, dtype uint8 or native-endian
        uint16, channel order as in the message.

    Raises:
        ImageFieldError: ``msg`` lacks Image fields, or one has the wrong type.
        UnsupportedEncodingError: the encoding is not in :data:`SUPPORTED_ENCODINGS`.
        ImageDecodeError: zero size, ``step`` smaller than a row, or ``data`` shorter than
            ``step * height``.
    """
    missing = [f for f in _MSG_FIELDS if not hasattr(msg, f)]
    if missing:
        raise ImageFieldError(
            f"expected a sensor_msgs/Image-like message with fields {', '.join(_MSG_FIELDS)}; "
            f"{type(msg).__name__} lacks {', '.join(missing)}"
        )
    height, width, step = (_integer_field(msg, name) for name in ("height", "width", "step"))
    if not isinstance(msg.is_bigendian, (bool, int, np.integer)) or int(msg.is_bigendian) not in (0, 1):
        raise ImageFieldError(f"Image.is_bigendian must be 0 or 1, got {msg.is_bigendian!r}")
    info = encoding_info(msg.encoding)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"image has zero size (height={height}, width={width}, encoding={info.name}); "
            "an empty Image usually means the publisher sent an uninitialised message"
        )
    row_bytes = width * info.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"image step {step} is smaller than one row of {width} px x "
            f"{info.bytes_per_pixel} B ({info.name}) = {row_bytes} B; the publisher filled "
            "step or encoding incorrectly"
        )
    buf = _data_as_uint8(msg.data)
    needed = step * height
    if buf.size < needed:
        raise ImageDecodeError(
            f"image data has {buf.size} B, expected at least step*height = {step}*{height} = "
            f"{needed} B for a {width}x{height} {info.name} image; the message is truncated or "
            "height/step are wrong"
        )
    rows = buf[:needed].reshape(height, step)[:, :row_bytes]
    if info.dtype.itemsize == 1:
        out = np.array(rows, dtype=np.uint8, order="C", copy=True) if copy else rows
    else:
        wire = np.dtype(">u2" if msg.is_bigendian else "<u2")
        if copy or wire != np.dtype(np.uint16):
            out = np.ascontiguousarray(rows).view(wire).astype(np.uint16, copy=True)
        else:  # native order: reinterpret each row's bytes in place (rows stay step bytes apart)
            out = rows.view(np.uint16)
    if info.channels == 1:
        return out.reshape(height, width)
    return out.reshape(height, width, info.channels)


def _integer_field(msg: Any, name: str) -> int:
    """An integer field of a message (``height``, ``width``, ``step``), or the codec's error."""
    value = getattr(msg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ImageFieldError(f"Image.{name} must be an integer, got {type(value).__name__} {value!r:.50}")
    return int(value)


def _check_array(array: np.ndarray, info: EncodingInfo, *, error: type[ValueError]) -> np.ndarray:
    """Check an array's dtype and channels against an encoding; return it as ``(H, W, C)``."""
    if not isinstance(array, np.ndarray):
        raise ImageFieldError(f"expected a numpy array for encoding {info.name}, got {type(array).__name__}")
    if array.dtype != info.dtype:
        hint = (
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
            if info.dtype == _U8
            else "use uint16 raw counts"
        )
        raise error(
            f"encoding {info.name} needs dtype {info.dtype}, got {array.dtype}; {hint} or pick "
            "an encoding that matches the data"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != info.channels:
        expected = "(H, W) or (H, W, 1)" if info.channels == 1 else f"(H, W, {info.channels})"
        raise error(f"encoding {info.name} needs an array of shape {expected}, got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise error(f"cannot handle an empty image of shape {array.shape} ({info.name})")
    return array


def _field_class(cls: type, field_name: str) -> type | None:
    """Resolve the class of a dataclass field of a rosbags message type (types are strings)."""
    try:
        field = {f.name: f for f in dataclasses.fields(cls)}[field_name]
    except (KeyError, TypeError):
        return None
    ftype = field.type
    if isinstance(ftype, type):
        return ftype
    module = sys.modules.get(cls.__module__)
    return getattr(module, str(ftype), None) if module is not None else None


def make_header(stamp_ns: int = 0, frame_id: str = "", msg_type: type | None = None) -> Any:
    """Build a ``std_msgs/Header`` of the family that ``msg_type`` (an Image class) belongs to.

    Args:
        stamp_ns: time stamp in integer nanoseconds (must be >= 0).
        frame_id: the TF frame of the camera.
        msg_type: the Image class the header is for: ``None`` for rclpy's
            ``sensor_msgs.msg.Image``, or a rosbags typestore class.

    Returns:
        An rclpy ``std_msgs.msg.Header`` or the rosbags ``std_msgs__msg__Header`` instance.
    """
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
        raise ImageFieldError(f"stamp_ns must be an integer >= 0 (ROS time, nanoseconds), got {stamp_ns!r:.50}")
    stamp_ns = int(stamp_ns)
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    if msg_type is not None and dataclasses.is_dataclass(msg_type):
        header_cls = _field_class(msg_type, "header")
        time_cls = _field_class(header_cls, "stamp") if header_cls is not None else None
        if header_cls is None or time_cls is None:
            raise ImageFieldError(
                f"cannot find the Header/Time classes for {msg_type!r}; pass header= explicitly"
            )
        return header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=str(frame_id))
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=str(frame_id))


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ``builtin_interfaces/Time`` (rclpy or rosbags) into integer nanoseconds.

    Raises:
        ImageFieldError: ``sec``/``nanosec`` missing or not integers (nanosec in [0, 1e9)).
    """
    sec, nanosec = getattr(stamp, "sec", None), getattr(stamp, "nanosec", None)
    for name, value in (("sec", sec), ("nanosec", nanosec)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ImageFieldError(f"header stamp.{name} must be an integer, got {value!r:.50}")
    assert sec is not None and nanosec is not None  # checked above; narrows the types for mypy
    if not 0 <= nanosec < 1_000_000_000:
        raise ImageFieldError(f"header stamp.nanosec must be in [0, 1e9), got {nanosec}")
    return int(sec) * 1_000_000_000 + int(nanosec)


def header_stamp_ns(msg: Any) -> int:
    """The header stamp of any stamped message in integer nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


def _default_image_type() -> type:
    try:
        from sensor_msgs.msg import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "numpy_to_image builds rclpy messages by default, but sensor_msgs is not importable "
            f"({exc}). Source a ROS 2 install or install the ros-sensor-msgs wheel, or pass "
            "msg_type= (e.g. a rosbags typestore's sensor_msgs__msg__Image)."
        ) from exc
    return Image


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    header: Any = None,
    msg_type: type | None = None,
) -> Any:
    """Encode a numpy array as a ``sensor_msgs/Image``.

    Args:
        array: ``(H, W)`` / ``(H, W, 1)`` for mono encodings or ``(H, W, C)`` for colour, with
            the encoding's dtype (uint8, or uint16 for ``mono16``/``16UC1``), channels already in
            the encoding's order.
        encoding: one of :data:`SUPPORTED_ENCODINGS`.
        header: a Header of the right family (see :func:`make_header`); ``None`` gives stamp 0
            and an empty frame_id.
        msg_type: the class to build: ``None`` for rclpy's ``sensor_msgs.msg.Image``, or another
            Image class such as the rosbags typestore's ``sensor_msgs__msg__Image`` (dataclasses
            are built with all fields as constructor keywords, ``data`` as a uint8 array).

    Returns:
        The message, with ``step = width * bytes_per_pixel`` and ``is_bigendian = 0``.

    Raises:
        UnsupportedEncodingError: unknown encoding.
        ImageEncodeError: dtype/shape do not match the encoding, or the array is empty.
    """
    info = encoding_info(encoding)
    arr3 = _check_array(array, info, error=ImageEncodeError)
    height, width = int(arr3.shape[0]), int(arr3.shape[1])
    step = width * info.bytes_per_pixel
    if info.dtype.itemsize > 1:
        arr3 = arr3.astype("<u2", copy=False)
    payload = np.ascontiguousarray(arr3).view(np.uint8).reshape(-1)
    cls = _default_image_type() if msg_type is None else msg_type
    if header is None:
        header = make_header(0, "", msg_type=cls)
    fields = dict(height=height, width=width, encoding=info.name, is_bigendian=0, step=step)
    if dataclasses.is_dataclass(cls):
        # rosbags: a dataclass whose data field is a numpy uint8 array
        header = _coerce_header(header, _field_class(cls, "header"), cls)
        # is_dataclass narrows cls to typeshed's field-less DataclassInstance; rosbags classes take their fields
        return cls(header=header, data=payload.copy(), **fields)  # type: ignore[call-arg]
    msg = cls()
    msg.header = _coerce_header(header, type(getattr(msg, "header", None)), cls)
    for key, value in fields.items():
        setattr(msg, key, value)
    # an array.array('B') is rclpy's fast path (no per-element validation of a Sequence);
    # frombytes on the numpy buffer makes the single copy
    data = _array.array("B")
    data.frombytes(memoryview(payload))  # type: ignore[arg-type]  # numpy stubs: ndarray is a Buffer on 3.12+ only
    msg.data = data
    return msg


def _coerce_header(header: Any, expected: type | None, cls: type) -> Any:
    """Return ``header`` as an instance of the Header class ``cls`` uses.

    Why: outputs copy their input's header, and the input may come from the other family (a
    rosbags message from a bag, published through rclpy, or the bag's own generated classes vs
    a typestore's). Any object with ``stamp.sec``, ``stamp.nanosec`` and ``frame_id`` is
    rebuilt; rclpy only validates field types when ``ROS_PYTHON_CHECK_FIELDS`` is set and
    rosbags never does, so a wrong type would otherwise fail late, inside a serializer.
    """
    if expected is None or expected is type(None) or isinstance(header, expected):
        return header
    try:
        stamp_ns, frame_id = stamp_to_ns(header.stamp), str(header.frame_id)
    except (AttributeError, ImageFieldError):
        raise ImageFieldError(
            f"header must be a std_msgs/Header (fields stamp and frame_id) for "
            f"{cls.__module__}.{cls.__name__}, got {type(header).__name__}; build one with "
            "make_header(stamp_ns, frame_id, msg_type=...)"
        ) from None
    return make_header(stamp_ns, frame_id, msg_type=cls)


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a decoded 8-bit image of any supported encoding to ``(H, W, 3)`` uint8 RGB.

    BGR is reordered, alpha dropped, gray replicated to three channels. The result may share
    memory with the input when no conversion is needed (``rgb8``).

    Raises:
        ImageDecodeError: a 16-bit encoding: raw counts have no fixed 8-bit meaning; give them to
            the Engine (which applies its AGC) or to ``io.thermal.agc_percentile`` for display.
    """
    info = encoding_info(encoding)
    arr = _check_array(array, info, error=ImageDecodeError)
    if info.dtype != _U8:
        raise ImageDecodeError(
            f"{info.name} holds raw 16-bit counts, which have no fixed RGB form; pass them to the "
            "Engine (its percentile AGC converts them) or apply io.thermal.agc_percentile to view them"
        )
    if info.order == "rgb":
        return np.ascontiguousarray(arr)
    # OpenCV reorders in one vectorised pass (reads row-padded views as they are): 480x640 bgr8
    # in ~0.1 ms against ~5 ms for numpy's copy of a reversed-channel view
    return cv2.cvtColor(arr if arr.shape[2] > 1 else arr[:, :, 0], _TO_RGB[info.order])


_TO_RGB = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB,
           "gray": cv2.COLOR_GRAY2RGB}


def decode_rgb(msg: Any, *, copy: bool = True) -> np.ndarray:
    """Decode an RGB camera's Image for the Engine.

    Args:
        msg: the Image.
        copy: False lets an ``rgb8`` image (and ``mono16``) share the message's buffer; see
            :func:`image_to_numpy`.

    Returns:
        ``(H, W, 3)`` uint8 RGB for 8-bit encodings (reordered, alpha dropped, gray replicated);
        ``(H, W)`` uint16 raw counts for ``mono16``/``16UC1`` (the Engine applies its AGC).

    Raises:
        as :func:`image_to_numpy`.
    """
    if is_compressed(msg):
        array = compressed_to_numpy(msg)
        return array if array.dtype != np.uint8 else to_rgb(array, "mono8" if array.ndim == 2 else _BGR[array.shape[2]])
    array = image_to_numpy(msg, copy=copy)
    info = encoding_info(msg.encoding)
    return array if info.dtype != _U8 else to_rgb(array, info.name)


def decode_thermal(msg: Any, *, copy: bool = True) -> np.ndarray:
    """Decode a thermal camera's Image for the Engine.

    Args:
        msg: the Image.
        copy: False lets mono images share the message's buffer; see :func:`image_to_numpy`.

    Returns:
        ``(H, W)`` uint8 or uint16 raw counts for mono encodings, as recorded; ``(H, W, 3)``
        uint8 in RGB order for false-colour encodings (the Engine converts them by luminance).

    Raises:
        as :func:`image_to_numpy`.
    """
    if is_compressed(msg):
        array = compressed_to_numpy(msg)
        return array if array.ndim == 2 else to_rgb(array, _BGR[array.shape[2]])
    array = image_to_numpy(msg, copy=copy)
    info = encoding_info(msg.encoding)
    return array if info.channels == 1 else to_rgb(array, info.name)


# OpenCV decodes colour JPEG/PNG in its own channel order
_BGR = {3: "bgr8", 4: "bgra8"}
# image_transport's compressedDepth PNGs start with a 12-byte config header (format, depth range)
_COMPRESSED_DEPTH_HEADER = 12


def is_compressed(msg: Any) -> bool:
    """Whether ``msg`` is a ``sensor_msgs/CompressedImage`` (it has ``format``, no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def compressed_encoding(msg: Any) -> str | None:
    """The raw encoding an image_transport ``format`` names, canonical (``"mono16"``), or None.

    Why: image_transport writes what the camera published before compressing
    (``"mono16; png compressed mono16"``, ``"bgr8; jpeg compressed bgr8"``,
    ``"16UC1; compressedDepth png"``), which tells thermal from RGB without decoding; older
    publishers write only ``"jpeg"``/``"png"``, which names no encoding.
    """
    head = str(getattr(msg, "format", "")).split(";", 1)[0].strip()
    info = _BY_LOWER.get(head.lower())
    return info.name if info is not None else None


def message_encoding(msg: Any) -> str | None:
    """The pixel encoding of an Image or a CompressedImage (see :func:`compressed_encoding`).

    Returns:
        The canonical encoding name, or None when a CompressedImage's format names none or an
        Image's encoding is not supported (the caller decides whether that is an error).
    """
    if is_compressed(msg):
        return compressed_encoding(msg)
    info = _BY_LOWER.get(str(getattr(msg, "encoding", "")).strip().lower())
    return info.name if info is not None else None


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (image_transport ``compressed``: JPEG or PNG,
    8- or 16-bit; ``compressedDepth`` PNG) with OpenCV, keeping the stored depth.

    Returns:
        ``(H, W)`` uint8/uint16 for mono data (16-bit PNG thermal stays raw counts), else
        ``(H, W, 3|4)`` uint8 in OpenCV's BGR(A) order.

    Raises:
        ImageDecodeError: empty, corrupt or truncated data, or an unsupported pixel depth.
    """
    fmt = str(msg.format)
    data = _data_as_uint8(msg.data)
    if "compresseddepth" in fmt.lower():
        data = data[_COMPRESSED_DEPTH_HEADER:]
    if data.size == 0:
        raise ImageDecodeError(f"compressed image ('{fmt}') has no data")
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ImageDecodeError(f"compressed image ('{fmt}', {data.size} bytes) is corrupt or truncated")
    if array.dtype not in (np.uint8, np.uint16) or (array.ndim == 3 and array.shape[2] not in _BGR):
        raise ImageDecodeError(f"compressed image ('{fmt}') decodes to unsupported {array.dtype} "
                               f"{array.shape}; expected 8/16-bit mono or 8-bit BGR(A)")
    if array.ndim == 3 and array.dtype != np.uint8:
        raise ImageDecodeError(f"compressed image ('{fmt}') is 16-bit colour; expected 16-bit mono")
    return array
