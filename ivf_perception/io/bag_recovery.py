"""Recover the readable part of a damaged rosbag2: truncated, corrupt or without metadata.yaml.

Why: recorders crash, disks fill and copies get cut short; ``rosbags`` then refuses the whole bag
(no MCAP footer, "database disk image is malformed", missing ``metadata.yaml``), although most of
the data is intact. This module scans the bag's storage files directly
(:mod:`~ivf_perception.io._mcap_scan`, :mod:`~ivf_perception.io._sqlite_scan`) and describes
what it found and what it could not read. :class:`~ivf_perception.io.bag_reader.BagReader` uses
it when the normal reader fails, so callers get one interface either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._mcap_scan import MAGIC as _MCAP_MAGIC
from ._mcap_scan import McapScan
from ._sqlite_scan import SqliteScan
from .errors import BagError

__all__ = ["RecoveredBag", "recover_bag", "storage_files", "typestore_with_definitions"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _natural_key(path: Path) -> list[Any]:
    """``bag_2.mcap`` before ``bag_10.mcap`` (rosbag2 numbers its split files)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag path: the file itself, or a folder's ``.mcap``/``.db3`` files."""
    if path.is_file():
        return [path]
    return sorted((p for p in path.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")), key=_natural_key)


@dataclass
class RecoveredBag:
    """What a scan of a bag's storage files found.

    Attributes:
        topics: ``{topic: msgtype}``.
        counts: ``{topic: messages found}``.
        definitions: ``{msgtype: (encoding, text)}`` message definitions stored in the bag.
        problems: human-readable descriptions of what could not be read (with byte offsets).
        storage: ``"mcap"``, ``"sqlite3"`` or both joined by ``+``.
    """

    topics: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    definitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    storage: str = ""
    _scans: list[tuple[Any, dict[int, str]]] = field(default_factory=list, repr=False)

    def records(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        """``(topic, log time ns, raw CDR)`` of the wanted topics, file by file."""
        for scan, id_to_topic in self._scans:
            ids = {i for i, t in id_to_topic.items() if t in topics}
            if ids:
                for topic_id, log_time, raw in scan.records(ids):
                    yield id_to_topic[topic_id], log_time, raw


def _add_scan(bag: RecoveredBag, scan: Any, id_to_topic: dict[int, str], types: dict[str, str],
              counts: dict[int, int]) -> None:
    for topic_id, topic in id_to_topic.items():
        bag.topics.setdefault(topic, types[topic])
        bag.counts[topic] = bag.counts.get(topic, 0) + counts.get(topic_id, 0)
    bag._scans.append((scan, id_to_topic))


def recover_bag(path: Path) -> RecoveredBag:
    """Scan every storage file of ``path`` (a rosbag2 folder or one ``.mcap``/``.db3`` file).

    Raises:
        BagError: no storage file, or none of them is an MCAP or SQLite file.
    """
    files = storage_files(path)
    if not files:
        raise BagError(f"{path} holds no .mcap or .db3 file to read")
    bag = RecoveredBag()
    kinds = []
    scan: McapScan | SqliteScan
    for file in files:
        with file.open("rb") as f:
            magic = f.read(16)
        name = file.name
        if magic.startswith(_MCAP_MAGIC):
            scan = McapScan(file)
            id_to_topic = {cid: ch.topic for cid, ch in scan.channels.items()}
            types = {ch.topic: ch.msgtype for ch in scan.channels.values()}
            for ch in scan.channels.values():
                if ch.msgdef:
                    bag.definitions.setdefault(ch.msgtype, (ch.encoding, ch.msgdef))
            kinds.append("mcap")
        elif magic == _SQLITE_MAGIC:
            scan = SqliteScan(file)
            id_to_topic = {tid: topic for tid, (topic, _) in scan.topics.items()}
            types = {topic: msgtype for topic, msgtype in scan.topics.values()}
            for msgtype, definition in scan.definitions.items():
                bag.definitions.setdefault(msgtype, definition)
            kinds.append("sqlite3")
        else:
            bag.problems.append(f"{name}: neither MCAP nor SQLite data (starts with {magic[:8]!r}); skipped")
            continue
        bag.problems.extend(f"{name}: {p}" for p in scan.problems)
        _add_scan(bag, scan, id_to_topic, types, scan.counts)
    if not kinds:
        raise BagError(f"none of the files of {path} ({', '.join(f.name for f in files)}) is an MCAP or SQLite bag")
    bag.storage = "+".join(sorted(set(kinds)))
    return bag


def typestore_with_definitions(base: Any, definitions: dict[str, tuple[str, str]]) -> tuple[Any, list[str]]:
    """A typestore holding ``base``'s types overridden by the definitions stored in a bag.

    Why: a bag recorded on another distribution may carry different definitions of a type; the
    bag's own definitions are what its bytes were serialised with (``AnyReader`` does the same).

    Returns:
        ``(typestore, problems)``: definitions that cannot be parsed are listed and ``base``'s
        version is used for them.
    """
    from rosbags.typesys import Stores, TypesysError, get_types_from_idl, get_types_from_msg
    from rosbags.typesys import get_typestore as _empty

    types = dict(base.fielddefs)
    problems = []
    for msgtype, (encoding, text) in definitions.items():
        try:
            if encoding == "ros2idl":
                sep = "=" * 80 + "\n"
                parts = text.split(sep)[1:] if text.startswith(f"{sep}IDL: ") else [text]
                for part in parts:
                    types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
            else:
                types.update(get_types_from_msg(text, msgtype))
        except (TypesysError, ValueError, IndexError) as exc:
            problems.append(f"the stored definition of {msgtype} cannot be parsed ({exc}); using the built-in one")
    store = _empty(Stores.EMPTY)
    store.register(types)
    return store, problems
