"""Thin rosbag2 helpers on top of ``rosbags`` (no ROS installation needed).

Why: ``rosbag2_py`` is not on PyPI, but the bag player, replay evaluation, frame extraction and
the tests all need to read and write image bags. ``rosbags`` reads and writes rosbag2 (MCAP and
SQLite3) in pure Python; these helpers fix the conventions once: images are
``sensor_msgs/msg/Image``, the record (log) time equals the header stamp when we write, and
decoded messages are rosbags objects that :func:`~ivf_perception.io.image_codec.image_to_numpy`
accepts directly.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np

from .errors import BagError, BagNotFoundError
from .image_codec import make_header, numpy_to_image

__all__ = [
    "IMAGE_MSGTYPE",
    "COMPRESSED_IMAGE_MSGTYPE",
    "CAMERA_MSGTYPES",
    "STORAGES",
    "BagFrame",
    "BagMessage",
    "get_typestore",
    "write_image_bag",
    "read_image_messages",
    "list_topics",
]

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_MSGTYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_MSGTYPES: tuple[str, ...] = (IMAGE_MSGTYPE, COMPRESSED_IMAGE_MSGTYPE)
"""Camera message types that replay, compare, extract and play read (decoded by io.image_codec)."""
STORAGES: tuple[str, ...] = ("mcap", "sqlite3")
_BAG_VERSION: Final = 9  # rosbag2 metadata version written by Jazzy/Kilted


def _stores() -> Any:
    from rosbags.typesys import Stores

    return Stores


@functools.lru_cache(maxsize=8)
def _typestore_for(store_name: str) -> Any:
    from rosbags.typesys import get_typestore as _rosbags_get_typestore

    return _rosbags_get_typestore(getattr(_stores(), store_name))


def get_typestore(distro: str = "kilted") -> Any:
    """The rosbags typestore of a ROS 2 distribution (cached: building one takes ~50 ms).

    Args:
        distro: ``"kilted"``, ``"jazzy"``, ``"humble"``, ... (case-insensitive), or a
            ``rosbags.typesys.Stores`` member.

    Raises:
        BagError: unknown distribution, listing the known ones.
    """
    stores = _stores()
    if isinstance(distro, stores):
        return _typestore_for(distro.name)
    name = f"ROS2_{str(distro).strip().upper()}"
    if not hasattr(stores, name):
        known = sorted(s.name[5:].lower() for s in stores if s.name.startswith("ROS2_"))
        raise BagError(f"unknown ROS 2 distribution {distro!r}; rosbags knows: {', '.join(known)}")
    return _typestore_for(name)


@dataclass(frozen=True)
class BagFrame:
    """One image to write into a bag.

    Attributes:
        topic: absolute topic name, e.g. ``"/camera/rgb/image"``.
        stamp_ns: header stamp and record time in integer nanoseconds.
        frame_id: the camera's TF frame.
        array: image data in the layout :func:`numpy_to_image` expects for ``encoding``.
        encoding: ROS image encoding, e.g. ``"rgb8"``, ``"mono16"``.
    """

    topic: str
    stamp_ns: int
    frame_id: str
    array: np.ndarray
    encoding: str


class BagMessage(NamedTuple):
    """One decoded image message: ``stamp_ns`` is the bag's record (log) time.

    The header stamp is in ``msg.header`` (see ``header_stamp_ns``); bags written by
    :func:`write_image_bag` have both equal, recorded bags usually do not.
    """

    topic: str
    stamp_ns: int
    msg: Any


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    key = str(storage).strip().lower()
    if key not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGES)}")
    return StoragePlugin.MCAP if key == "mcap" else StoragePlugin.SQLITE3


_BAG_FILE_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".yaml", ".zstd")


def _remove_old_bag(bag_path: Path) -> None:
    """Delete an existing rosbag2 folder, refusing anything that holds other files."""
    if not bag_path.is_dir():
        raise BagError(
            f"cannot overwrite {bag_path}: it is a file, not a rosbag2 folder; remove it yourself"
        )
    entries = list(bag_path.iterdir())
    foreign = [e.name for e in entries if e.is_dir() or not e.name.endswith(_BAG_FILE_SUFFIXES)]
    if entries and (foreign or not (bag_path / "metadata.yaml").is_file()):
        raise BagError(
            f"refusing to overwrite {bag_path}: it does not look like a rosbag2 folder "
            f"({_describe(bag_path)}); remove it yourself or choose another path"
        )
    shutil.rmtree(bag_path)


def write_image_bag(
    path: str | os.PathLike[str],
    frames: Iterable[BagFrame],
    storage: str = "mcap",
    distro: str = "kilted",
    *,
    overwrite: bool = False,
) -> Path:
    """Write image frames into a new rosbag2 folder.

    Connections are created per topic on first use. Messages are written in the order given
    (sort by ``stamp_ns`` beforehand for a well-behaved bag).

    Args:
        path: the bag folder to create (must not exist yet).
        frames: :class:`BagFrame` objects.
        storage: ``"mcap"`` (the default since ROS 2 Iron) or ``"sqlite3"``.
        distro: ROS 2 distribution whose message definitions are stored.
        overwrite: replace an existing bag at ``path`` (only a folder that holds nothing but
            bag files is deleted; anything else is refused).

    Returns:
        The bag folder.

    Raises:
        BagError: ``path`` exists (without ``overwrite``), unknown storage/distro, or a frame
            cannot be encoded.
    """
    from rosbags.rosbag2 import Writer, WriterError

    bag_path = Path(path)
    plugin = _storage_plugin(storage)
    typestore = get_typestore(distro)
    if bag_path.exists():
        if not overwrite:
            raise BagError(
                f"bag path {bag_path} already exists; remove it, choose another path or pass "
                "overwrite=True"
            )
        _remove_old_bag(bag_path)
    image_cls = typestore.types[IMAGE_MSGTYPE]
    connections: dict[str, Any] = {}
    try:
        with Writer(bag_path, version=_BAG_VERSION, storage_plugin=plugin) as writer:
            for i, frame in enumerate(frames):
                if not isinstance(frame, BagFrame):
                    raise TypeError(f"frame {i} must be a BagFrame, got {type(frame).__name__}")
                conn = connections.get(frame.topic)
                if conn is None:
                    conn = writer.add_connection(frame.topic, IMAGE_MSGTYPE, typestore=typestore)
                    connections[frame.topic] = conn
                header = make_header(frame.stamp_ns, frame.frame_id, msg_type=image_cls)
                msg = numpy_to_image(frame.array, frame.encoding, header=header, msg_type=image_cls)
                writer.write(conn, int(frame.stamp_ns), typestore.serialize_cdr(msg, IMAGE_MSGTYPE))
    except WriterError as exc:
        raise BagError(f"cannot write bag {bag_path}: {exc}") from exc
    return bag_path


def _describe(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} entries)" if len(names) > 10 else "")
        return f"folder containing: {shown or 'nothing'}"
    return f"file of {path.stat().st_size} bytes"


def _open_reader(path: str | os.PathLike[str]) -> Any:
    """Create (not open) an AnyReader after checking the path looks like a bag."""
    from rosbags.highlevel import AnyReader

    bag_path = Path(path)
    if not bag_path.exists():
        raise BagNotFoundError(f"bag not found: {bag_path}")
    if bag_path.is_dir() and not (bag_path / "metadata.yaml").is_file():
        raise BagError(
            f"{bag_path} is not a rosbag2 folder (no metadata.yaml); it is a {_describe(bag_path)}"
        )
    return AnyReader([bag_path], default_typestore=get_typestore())


def _open(reader: Any, path: Path) -> None:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError

    try:
        reader.open()
    except (AnyReaderError, ReaderError) as exc:
        raise BagError(f"cannot read bag {path} ({_describe(path)}): {exc}") from exc


def list_topics(path: str | os.PathLike[str]) -> dict[str, str]:
    """Topics of a bag and their message types, e.g. ``{"/camera/rgb/image": IMAGE_MSGTYPE}``."""
    reader = _open_reader(path)
    _open(reader, Path(path))
    try:
        return {conn.topic: conn.msgtype for conn in reader.connections}
    finally:
        reader.close()


def read_image_messages(
    path: str | os.PathLike[str], topics: Sequence[str] | None = None
) -> Iterator[BagMessage]:
    """Iterate over the ``sensor_msgs/msg/Image`` messages of a bag in record-time order.

    The path and topics are checked when this function is called; the bag is then read lazily
    while iterating.

    Args:
        path: a rosbag2 folder (MCAP or SQLite3) or a ROS 1 ``.bag`` file.
        topics: topics to read; ``None`` reads every Image topic (other types are skipped).

    Yields:
        :class:`BagMessage` ``(topic, stamp_ns, msg)``: ``stamp_ns`` is the record time; ``msg``
        a decoded rosbags Image (``data`` a uint8 numpy array) for ``image_to_numpy``.

    Raises:
        BagNotFoundError: the path does not exist.
        BagError: not a bag (lists what is there), or a requested topic is missing or not an
            Image topic (lists the bag's topics).
    """
    bag_path = Path(path)
    available = list_topics(bag_path)
    if topics is None:
        wanted = {t for t, mtype in available.items() if mtype == IMAGE_MSGTYPE}
    else:
        if isinstance(topics, str):
            topics = [topics]
        wanted = set(topics)
        listing = ", ".join(f"{t} [{m}]" for t, m in sorted(available.items())) or "none"
        missing = sorted(wanted - available.keys())
        if missing:
            raise BagError(f"topics {missing} are not in bag {bag_path}; it has: {listing}")
        wrong = sorted(t for t in wanted if available[t] != IMAGE_MSGTYPE)
        if wrong:
            raise BagError(
                f"topics {wrong} in bag {bag_path} are not {IMAGE_MSGTYPE}; it has: {listing}"
            )
    return _iterate(bag_path, wanted)


def _iterate(bag_path: Path, wanted: set[str]) -> Iterator[BagMessage]:
    reader = _open_reader(bag_path)
    _open(reader, bag_path)
    try:
        connections = [c for c in reader.connections if c.topic in wanted]
        if not connections:
            return
        for conn, timestamp, raw in reader.messages(connections=connections):
            yield BagMessage(conn.topic, int(timestamp), reader.deserialize(raw, conn.msgtype))
    finally:
        reader.close()
