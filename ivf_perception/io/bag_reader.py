"""A tolerant rosbag2 reader: read what is readable, report the rest.

Why: tools that evaluate or mine recorded drives (bag replay, frame extraction) must not lose a
whole drive because its last second is damaged. :class:`BagReader` opens a bag with ``rosbags``
(any storage, the bag's own message definitions, the given distribution's otherwise); when that
fails, or reading fails half-way, it continues with :func:`~ivf_perception.io.bag_recovery.recover_bag`
and records in :class:`BagReadReport` exactly what was lost. A message that cannot be
deserialised is skipped and counted, never fatal.

:func:`~ivf_perception.io.bag.read_image_messages` stays the strict reader for callers that want
an error on any damage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .bag import BagMessage, get_typestore
from .bag_recovery import RecoveredBag, recover_bag, storage_files, typestore_with_definitions
from .errors import BagError, BagNotFoundError

__all__ = ["BagReader", "BagReadReport", "BagRecord"]

_log = logging.getLogger(__name__)
_MAX_LISTED_ERRORS = 20


class BagRecord(NamedTuple):
    """One serialised message: ``log_time_ns`` is the bag's record (receive) time."""

    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes


@dataclass
class BagReadReport:
    """What was read from a bag and what was not.

    Attributes:
        path: the bag.
        storage: ``"mcap"``, ``"sqlite3"``, ...
        recovered: the normal reader failed and the storage files were scanned instead.
        open_error: why the normal reader failed (None if it did not).
        problems: damage found (truncation, corrupt chunks or pages), with byte offsets.
        read: ``{topic: messages read and deserialised}``.
        undecodable: ``{topic: messages skipped because they could not be deserialised}``.
        errors: the first deserialisation errors (topic, log time, reason).
    """

    path: str
    storage: str = ""
    recovered: bool = False
    open_error: str | None = None
    problems: list[str] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)
    undecodable: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Whether anything could not be read."""
        return bool(self.recovered or self.problems or self.undecodable)

    @property
    def total_read(self) -> int:
        return sum(self.read.values())

    def note_undecodable(self, topic: str, log_time_ns: int, reason: str) -> None:
        """Count a message that was skipped (also used by callers that decode images)."""
        self.undecodable[topic] = self.undecodable.get(topic, 0) + 1
        if len(self.errors) < _MAX_LISTED_ERRORS:
            self.errors.append(f"{topic} @ {log_time_ns}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "storage": self.storage, "recovered": self.recovered,
            "open_error": self.open_error, "problems": list(self.problems), "read": dict(self.read),
            "undecodable": dict(self.undecodable), "errors": list(self.errors), "damaged": self.damaged,
        }

    def lines(self) -> list[str]:
        """A human-readable account, one finding per line (empty for an intact bag)."""
        out = []
        if self.recovered:
            out.append(f"the bag could not be opened normally ({self.open_error}); its files were scanned "
                       "and every readable message was used")
        out += self.problems
        for topic, n in sorted(self.undecodable.items()):
            out.append(f"{n} message(s) on {topic} could not be decoded and were skipped")
        return out


def _reader_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError as Rosbag2Error
    from rosbags.typesys import TypesysError

    return AnyReaderError, Rosbag2Error, TypesysError, OSError


class BagReader:
    """Open a bag for tolerant reading (a context manager; :meth:`close` releases files).

    Args:
        path: a rosbag2 folder, or a single ``.mcap`` / ``.db3`` file.
        distro: the typestore used for types the bag carries no definition of (e.g. Humble
            SQLite bags); sensor_msgs/Image is the same in every ROS 2 distribution.

    Raises:
        BagNotFoundError: the path does not exist.
        BagError: nothing at the path can be read as a bag (the message lists what is there).
    """

    def __init__(self, path: str | os.PathLike[str], distro: str = "kilted") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagNotFoundError(f"bag not found: {self.path}")
        self.report = BagReadReport(str(self.path))
        self._base_store = get_typestore(distro)
        self._reader: Any = None
        self._recovered: RecoveredBag | None = None
        self.topics: dict[str, str] = {}
        self.counts: dict[str, int | None] = {}
        try:
            self._open_normal()
        except _reader_errors() as exc:
            self._close_normal()
            self.report.open_error = str(exc) or type(exc).__name__
            self._open_recovered()

    # ------------------------------------------------------------------ opening

    def _open_normal(self) -> None:
        from rosbags.highlevel import AnyReader

        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            from rosbags.rosbag2 import ReaderError as Rosbag2Error

            raise Rosbag2Error(f"{self.path} has no metadata.yaml (a recording that did not finish?)")
        self._reader = AnyReader([self.path], default_typestore=self._base_store)
        self._reader.open()
        self._typestore = self._reader.typestore
        self.topics = {c.topic: c.msgtype for c in self._reader.connections}
        self.counts = {c.topic: int(c.msgcount) for c in self._reader.connections}
        suffixes = {p.suffix for p in storage_files(self.path)}
        self.report.storage = "+".join(name for suffix, name in ((".mcap", "mcap"), (".db3", "sqlite3"))
                                       if suffix in suffixes) or self.path.suffix.lstrip(".")

    def _close_normal(self) -> None:
        if self._reader is not None and self._reader.stack is not None:
            self._reader.close()
        self._reader = None

    def _open_recovered(self) -> None:
        if self.path.is_dir() and not storage_files(self.path):
            names = sorted(p.name for p in self.path.iterdir())
            raise BagError(f"{self.path} is not a rosbag2 folder: no metadata.yaml and no .mcap/.db3 file "
                           f"(it holds: {', '.join(names[:10]) or 'nothing'})")
        try:
            recovered = recover_bag(self.path)
        except ValueError as exc:
            raise BagError(f"cannot read bag {self.path}: {self.report.open_error}; scanning its files "
                           f"failed too: {exc}") from exc
        self._recovered = recovered
        self._typestore, problems = typestore_with_definitions(self._base_store, recovered.definitions)
        self.report.recovered = True
        self.report.storage = recovered.storage
        self.report.problems += recovered.problems + problems
        self.topics = dict(recovered.topics)
        self.counts = dict(recovered.counts)
        _log.info("bag %s could not be opened normally (%s); scanning its files instead",
                     self.path, self.report.open_error)

    # ------------------------------------------------------------------ reading

    def records(self, topics: Sequence[str] | None = None) -> Iterator[BagRecord]:
        """Serialised messages of ``topics`` (default: all) in record-time order.

        If the normal reader fails half-way (a corrupt chunk, a damaged page), the failure is
        recorded and reading continues from the same time with a scan of the files.
        """
        wanted = set(self.topics if topics is None else topics)
        unknown = sorted(wanted - self.topics.keys())
        if unknown:
            raise BagError(f"topics {unknown} are not in bag {self.path}; it has: {self.describe_topics()}")
        if not wanted:  # rosbags reads every connection when given none
            return
        if self._recovered is not None:
            for topic, log_time, raw in self._recovered.records(wanted):
                yield BagRecord(topic, self.topics[topic], log_time, raw)
            return
        last_time, at_last = -1, 0
        connections = [c for c in self._reader.connections if c.topic in wanted]
        try:
            for conn, log_time, raw in self._reader.messages(connections=connections):
                at_last = at_last + 1 if log_time == last_time else 1
                last_time = log_time
                yield BagRecord(conn.topic, conn.msgtype, int(log_time), bytes(raw))
        except Exception as exc:  # noqa: BLE001 - any storage failure hands over to the scan below
            self.report.problems.append(
                f"reading stopped after record time {last_time} ({type(exc).__name__}: {exc}); "
                "continued by scanning the bag's files")
            yield from self._continue_recovered(wanted, last_time, at_last)

    def _continue_recovered(self, wanted: set[str], last_time: int, at_last: int) -> Iterator[BagRecord]:
        try:
            recovered = recover_bag(self.path)
        except (BagError, ValueError, OSError) as exc:
            self.report.problems.append(f"scanning the files failed too ({exc}); the rest of the bag is lost")
            return
        self.report.recovered = True
        self.report.problems += recovered.problems
        skip = at_last
        for topic, log_time, raw in recovered.records(wanted):
            if log_time < last_time:
                continue
            if log_time == last_time and skip:
                skip -= 1
                continue
            yield BagRecord(topic, self.topics.get(topic, recovered.topics[topic]), log_time, raw)

    def decode(self, record: BagRecord) -> Any | None:
        """The message object of a record, or None (counted in :attr:`report`) if it is malformed."""
        try:
            msg = self._typestore.deserialize_cdr(record.raw, record.msgtype)
        except Exception as exc:  # noqa: BLE001 - rosbags raises many types on malformed CDR
            self.report.note_undecodable(record.topic, record.log_time_ns,
                                         f"cannot deserialise {record.msgtype}: {type(exc).__name__}: {exc}")
            return None
        self.report.read[record.topic] = self.report.read.get(record.topic, 0) + 1
        return msg

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
        """Deserialised messages; malformed ones are skipped and counted in :attr:`report`."""
        for record in self.records(topics):
            msg = self.decode(record)
            if msg is not None:
                yield BagMessage(record.topic, record.log_time_ns, msg)

    # ------------------------------------------------------------------ misc

    @property
    def typestore(self) -> Any:
        """The typestore messages are deserialised with (the bag's definitions first)."""
        return self._typestore

    def describe_topics(self) -> str:
        """``/a [type] (n msgs), ...`` for error messages that must list what the bag holds."""
        if not self.topics:
            return "no topics at all"
        return ", ".join(f"{t} [{m}] ({self.counts.get(t, '?')} msgs)" for t, m in sorted(self.topics.items()))

    def close(self) -> None:
        self._close_normal()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
