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
    ``"CompressedImage"`` get that message type.
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
            msgtype = "sensor_msgs/msg/CompressedImage" if encoding == "CompressedImage" else "sensor_msgs/msg/Image"
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            if isinstance(payload, bytes):
                raw = payload
            elif msgtype.endswith("CompressedImage"):
                header = make_header(stamp_ns, "cam", msg_type=image_cls)
                msg = ts.types[msgtype](header=header, format="jpeg", data=np.frombuffer(payload.tobytes(), np.uint8))
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
