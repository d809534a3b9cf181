"""Constants shared by the replay tests (sizes, the micro engine's CLI options)."""

from __future__ import annotations

from ivf_perception.scenes import SceneConfig

FRAMES = 6
CONFIG = SceneConfig(height=64, width=96, seed=3)
MICRO = ["--variant", "test_s4fusion", "--weights", "none", "--device", "cpu", "--threads", "1", "--no-progress"]


def write_bag(path, entries, storage: str = "mcap", distro: str = "kilted"):
    """A bag with full control over record times, header stamps, encodings and raw bytes.

    ``entries``: ``(topic, record_ns, stamp_ns, payload, encoding)`` in writing order; ``payload``
    is an array (an Image with that encoding, which may be one the codec does not support) or
    ``bytes`` written as the raw message (to simulate corrupt data). Topics whose encoding is
    ``"compressed:<format>"`` get the CompressedImage type with that image_transport format
    (``"mono16; png compressed mono16"``): an image array is encoded by OpenCV as the format says
    (RGB arrays given in RGB order), a 1-D uint8 array is the compressed data as is (truncate it to
    simulate a cut-off frame).
    """
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ivf_perception.io.bag import get_typestore
    from ivf_perception.io.image_codec import make_header

    ts = get_typestore(distro)
    image_cls = ts.types["sensor_msgs/msg/Image"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    conns = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for topic, record_ns, stamp_ns, payload, encoding in entries:
            compressed = encoding.startswith("compressed:")
            msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            if isinstance(payload, bytes):
                raw = payload
            elif msgtype.endswith("CompressedImage"):
                header = make_header(stamp_ns, "cam", msg_type=image_cls)
                fmt = encoding.split(":", 1)[1]
                msg = ts.types[msgtype](header=header, format=fmt, data=_compress(payload, fmt))
                raw = ts.serialize_cdr(msg, msgtype)
            else:
                header = make_header(stamp_ns, "cam", msg_type=image_cls)
                arr = np.ascontiguousarray(payload)
                channels = 1 if arr.ndim == 2 else arr.shape[2]
                msg = image_cls(header=header, height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                                is_bigendian=0, step=arr.shape[1] * channels * arr.itemsize,
                                data=arr.view(np.uint8).reshape(-1).copy())
                raw = ts.serialize_cdr(msg, msgtype)
            writer.write(conns[topic], record_ns, raw)
    return path


def _compress(payload, fmt: str):
    """The CompressedImage data for ``payload`` (see :func:`write_bag`)."""
    import cv2
    import numpy as np

    if payload.ndim == 1:
        return payload.astype(np.uint8)
    image = payload[:, :, ::-1] if payload.ndim == 3 else payload  # OpenCV encodes BGR
    ok, buf = cv2.imencode(".jpg" if "jpeg" in fmt else ".png", np.ascontiguousarray(image))
    assert ok, fmt
    header = bytes(12) if "compressedDepth" in fmt else b""  # image_transport's depth config header
    return np.frombuffer(header + buf.tobytes(), np.uint8)
