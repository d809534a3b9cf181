"""Page scan of a damaged rosbag2 SQLite3 file: every message row whose page survived.

Why: SQLite refuses a whole database ("database disk image is malformed") as soon as one page
its schema points to is missing, which is what a bag copied halfway, cut by a full disk or
damaged on an SD card looks like. A rosbag2 database is simple: ``topics(id, name, type,
serialization_format, offered_qos_profiles[, type_description_hash])``, ``messages(id,
topic_id, timestamp, data)`` and (Iron and later) ``message_definitions(id, topic_type,
encoding, encoded_message_definition, type_description_hash)``. Their rows sit in table leaf
pages (type 0x0D) that can be decoded one by one following the SQLite file format
(https://www.sqlite.org/fileformat2.html), without the b-tree above them, so every row whose
leaf page and overflow chain are intact is recovered. Rows are told apart by their shape.

Used through :mod:`ivf_perception.io.bag_recovery`; not a general SQLite reader.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SqliteScan"]

_MAGIC = b"SQLite format 3\x00"
_LEAF_TABLE = 0x0D
_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


class _BadCell(Exception):
    """A cell cannot be decoded (points outside its page or the file, broken overflow chain)."""


def _varint(buf: mmap.mmap | bytes | bytearray, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if pos + i >= len(buf):
            raise _BadCell("varint runs past the end of the data")
        byte = buf[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class _Row:
    """Location of one message row (its payload is read again when the message is wanted)."""

    timestamp: int
    rowid: int
    topic_id: int
    page: int
    cell: int


class SqliteScan:
    """Recover rosbag2 tables from a ``.db3`` file page by page.

    After construction, :attr:`topics` (``{topic id: (name, type)}``), :attr:`definitions`
    (``{type: (encoding, text)}``), :attr:`counts` and :attr:`problems` describe what was found;
    :meth:`records` yields the message rows in timestamp order.

    Raises:
        ValueError: the file does not start with the SQLite header.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.topics: dict[int, tuple[str, str]] = {}
        self.definitions: dict[str, tuple[str, str]] = {}
        self.counts: dict[int, int] = {}
        self.problems: list[str] = []
        self._rows: list[_Row] = []
        with self.path.open("rb") as f:
            head = f.read(100)
        if len(head) < 100 or head[:16] != _MAGIC:
            raise ValueError(f"{self.path} does not start with the SQLite header")
        (page_size,) = struct.unpack_from(">H", head, 16)
        self.page_size = 65536 if page_size == 1 else page_size
        self.usable = self.page_size - head[20]
        self.pages = self.size // self.page_size
        if self.size % self.page_size:
            self.problems.append(
                f"file is {self.size} bytes, not a whole number of {self.page_size}-byte pages (truncated); "
                "the last partial page was ignored")
        self._scan()

    def records(self, topic_ids: set[int]) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(topic id, timestamp ns, raw CDR)`` of the wanted topics in timestamp order."""
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for row in self._rows:
                if row.topic_id in topic_ids:
                    values = self._decode(mm, row.page, row.cell, full=True)
                    yield row.topic_id, row.timestamp, bytes(values[3])

    # ------------------------------------------------------------------ scanning

    def _scan(self) -> None:
        bad_cells = 0
        seen: set[int] = set()
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for page in range(1, self.pages + 1):
                base = (page - 1) * self.page_size
                header = base + (100 if page == 1 else 0)
                if mm[header] != _LEAF_TABLE:
                    continue
                (ncells,) = struct.unpack_from(">H", mm, header + 3)
                if header + 8 + 2 * ncells > base + self.page_size:
                    continue  # not really a leaf page (overflow page content that looks like one)
                for i in range(ncells):
                    (offset,) = struct.unpack_from(">H", mm, header + 8 + 2 * i)
                    try:
                        self._classify(mm, page, base + offset, seen)
                    except _BadCell:
                        bad_cells += 1
        if bad_cells:
            self.problems.append(f"{bad_cells} table row(s) sit on damaged or missing pages and were skipped")
        self._rows.sort(key=lambda r: (r.timestamp, r.rowid))
        for row in self._rows:
            self.counts[row.topic_id] = self.counts.get(row.topic_id, 0) + 1
        unknown = sorted({r.topic_id for r in self._rows} - self.topics.keys())
        if unknown:
            self.problems.append(f"messages of topic id(s) {unknown} were found but their topics rows are lost")

    def _classify(self, mm: mmap.mmap, page: int, cell: int, seen: set[int]) -> None:
        values = self._decode(mm, page, cell, full=None)
        kinds = [type(v).__name__ for v in values]
        rowid = values[-1]
        values = values[:-1]
        if kinds[:4] == ["NoneType", "int", "int", "_Blob"] and len(values) == 4:
            if rowid not in seen:  # a row copied to two pages is counted once
                self._decode(mm, page, cell, full=True)  # raises _BadCell if its overflow chain is broken
                seen.add(rowid)
                self._rows.append(_Row(values[2], rowid, values[1], page, cell))
        elif len(values) >= 5 and all(k == "str" for k in kinds[1:5]):
            first, second, third = values[1], values[2], values[3]
            if first.startswith("/") and "/" in second:  # topics: name, type, serialization format
                self.topics.setdefault(rowid, (first, second))
            elif "/" in first and second in ("ros2msg", "ros2idl", "") and third:  # message_definitions
                self.definitions.setdefault(first, (second, third))

    def _decode(self, mm: mmap.mmap, page: int, cell: int, *, full: bool | None) -> list:
        """Decode a table-leaf cell: its column values plus the rowid (last).

        ``full=False`` leaves BLOB columns empty (the scan only needs a message row's topic and
        time); ``None`` reads everything unless the row holds a BLOB.
        """
        page_end = page * self.page_size
        if not (page - 1) * self.page_size <= cell < page_end:
            raise _BadCell("cell pointer outside its page")
        payload_size, pos = _varint(mm, cell)
        rowid, pos = _varint(mm, pos)
        usable = self.usable
        max_local = usable - 35
        if payload_size <= max_local:
            local = payload_size
        else:
            min_local = (usable - 12) * 32 // 255 - 23
            local = min_local + (payload_size - min_local) % (usable - 4)
            if local > max_local:
                local = min_local
        if pos + local > page_end:
            raise _BadCell("cell payload outside its page")
        payload = bytearray(mm[pos:pos + local])
        header_size, hpos = _varint(payload, 0)
        if header_size > len(payload):
            raise _BadCell("record header does not fit in the page")
        types = []
        while hpos < header_size:
            serial, hpos = _varint(payload, hpos)
            types.append(serial)
        if full is None:
            full = not any(t >= 12 and t % 2 == 0 for t in types)
        if full and payload_size > local:
            (next_page,) = struct.unpack_from(">I", mm, pos + local)
            remaining = payload_size - local
            hops = 0
            while remaining > 0:
                if not 1 <= next_page <= self.pages or hops > self.pages:
                    raise _BadCell("overflow chain points to a missing page")
                start = (next_page - 1) * self.page_size
                take = min(remaining, usable - 4)
                payload += mm[start + 4:start + 4 + take]
                (next_page,) = struct.unpack_from(">I", mm, start)
                remaining -= take
                hops += 1
        return self._columns(payload, header_size, types, full) + [rowid]

    @staticmethod
    def _columns(payload: bytearray, pos: int, types: list[int], full: bool) -> list:
        values: list = []
        for serial in types:
            if serial == 0:
                values.append(None)
            elif serial in _INT_SIZES:
                n = _INT_SIZES[serial]
                if pos + n > len(payload):
                    raise _BadCell("integer column outside the payload")
                values.append(int.from_bytes(payload[pos:pos + n], "big", signed=True))
                pos += n
            elif serial == 7:
                values.append(struct.unpack_from(">d", payload, pos)[0])
                pos += 8
            elif serial in (8, 9):
                values.append(serial - 8)
            elif serial >= 12 and serial % 2 == 0:
                n = (serial - 12) // 2
                values.append(_Blob(payload[pos:pos + n]) if full else _Blob(b""))
                pos += n
            elif serial >= 13:
                n = (serial - 13) // 2
                if pos + n > len(payload):
                    raise _BadCell("text column outside the payload (spills to overflow pages)")
                values.append(bytes(payload[pos:pos + n]).decode("utf-8", errors="replace"))
                pos += n
            else:
                raise _BadCell(f"reserved serial type {serial}")
        return values


class _Blob(bytes):
    """A BLOB column (a distinct type so rows can be classified by column kinds)."""
