"""The replay's output bag: what the live node would have published, as a rosbag2 (MCAP).

Why a bag: users inspect results in the tools they already use (``ros2 bag play`` into RViz,
Foxglove), side by side with the inputs. Topics are the node's output names under a namespace
(``/ivf_perception/fused/image`` rgb8, ``.../segmentation/labels`` mono8 class ids,
``.../segmentation/overlay`` rgb8, ``.../fusion/stats`` FusionStats). Every output carries the RGB
input's header (stamp and frame_id), as the node does (DESIGN §4), and is logged at the record
time its pair became complete, so outputs line up with the inputs when played back. With
``copy_inputs`` the input topics are copied byte for byte, making the bag self-contained.

MCAP stores each type's definition, which Foxglove and ``ros2 bag`` need to decode the custom
FusionStats without its package installed. FusionStats fields mean what they mean live, except
``end_to_end_ms``: in replay it is the wall time from the pair being formed to its outputs being
written (there is no transport to measure).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ivf_perception.io.bag import IMAGE_MSGTYPE, get_typestore
from ivf_perception.io.bag_pairing import FramePair
from ivf_perception.io.bag_reader import BagRecord
from ivf_perception.io.errors import BagError
from ivf_perception.io.image_codec import make_header, numpy_to_image
from ivf_perception.io.stats_msg import FUSION_STATS_MSGTYPE, FusionStatsValues, register_fusion_stats

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.rosbag2 import Writer

__all__ = ["OutputBag", "OUTPUT_TOPICS", "DEFAULT_NAMESPACE"]

DEFAULT_NAMESPACE = "/ivf_perception"
OUTPUT_TOPICS = {"fused": "fused/image", "labels": "segmentation/labels", "overlay": "segmentation/overlay",
                 "stats": "fusion/stats"}
_BAG_VERSION: Final = 9


class OutputBag:
    """Writer of the output bag (a context manager: the bag is complete and readable after close).

    Args:
        path: the rosbag2 folder to create (must not exist).
        namespace: prefix of the output topics.
        copy_topics: ``{topic: msgtype}`` of input topics to copy, or None.
        distro: typestore whose message definitions are stored.
    """

    def __init__(self, path: str | os.PathLike[str], namespace: str = DEFAULT_NAMESPACE,
                 copy_topics: dict[str, str] | None = None, distro: str = "kilted") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path = Path(path)
        self.typestore = get_typestore(distro)
        register_fusion_stats(self.typestore)
        self._image_cls = self.typestore.types[IMAGE_MSGTYPE]
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = {key: f"{ns}/{name}" for key, name in OUTPUT_TOPICS.items()}
        self._writer: Writer | None = Writer(self.path, version=_BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        try:
            self._writer.open()
            types = {key: IMAGE_MSGTYPE for key in ("fused", "labels", "overlay")}
            types["stats"] = FUSION_STATS_MSGTYPE
            self._conns = {key: self._writer.add_connection(self.topics[key], types[key], typestore=self.typestore)
                           for key in types}
            self._copies = {topic: self._writer.add_connection(topic, msgtype, typestore=self.typestore)
                            for topic, msgtype in (copy_topics or {}).items()}
        except (WriterError, KeyError) as exc:
            self.close()
            raise BagError(f"cannot create output bag {self.path}: {exc}") from exc
        self.frames_written = 0

    def copy(self, record: BagRecord) -> None:
        """Copy an input message unchanged (if its topic is one of ``copy_topics``)."""
        conn = self._copies.get(record.topic)
        if conn is not None:
            self._write(conn, record.log_time_ns, record.raw)

    def _write(self, conn: Connection, log_ns: int, raw: bytes | memoryview) -> None:
        if self._writer is None:
            raise BagError(f"output bag {self.path} is already closed")
        self._writer.write(conn, log_ns, raw)

    def _image(self, key: str, array: np.ndarray, encoding: str, header: Any, log_ns: int) -> None:
        msg = numpy_to_image(array, encoding, header=header, msg_type=self._image_cls)
        self._write(self._conns[key], log_ns, self.typestore.serialize_cdr(msg, IMAGE_MSGTYPE))

    def write_frame(self, pair: FramePair, fused: np.ndarray, labels: np.ndarray | None,
                    overlay: np.ndarray | None, stats: FusionStatsValues) -> None:
        """Write one frame's outputs (labels/overlay only when the engine segments)."""
        header = make_header(pair.rgb_stamp_ns, pair.frame_id, msg_type=self._image_cls)
        log_ns = pair.completed_log_ns
        self._image("fused", fused, "rgb8", header, log_ns)
        if labels is not None:
            self._image("labels", labels, "mono8", header, log_ns)
        if overlay is not None:
            self._image("overlay", overlay, "rgb8", header, log_ns)
        msg = stats.to_rosbags(self.typestore)
        self._write(self._conns["stats"], log_ns, self.typestore.serialize_cdr(msg, FUSION_STATS_MSGTYPE))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (footer, summary, metadata.yaml); safe to call twice."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> OutputBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
