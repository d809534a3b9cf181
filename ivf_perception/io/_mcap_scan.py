"""Sequential scan of a damaged MCAP file: everything up to the first unreadable byte.

Why: ``rosbags`` opens an MCAP file through its footer and summary, which a recorder that
crashed or a copy that was cut short never wrote, so it refuses the whole file. MCAP records are
framed (opcode, length, content), so reading them front to back recovers every complete record
before the damage; a chunk whose framing is intact but whose content is corrupt (checksum or
decompression failure) is skipped and the scan continues behind it. Messages inside a chunk are
yielded in log-time order (as rosbag2 would), chunks in file order.

Used through :mod:`ivf_perception.io.bag_recovery`; not a general MCAP library.
"""

from __future__ import annotations

import struct
from binascii import crc32
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["McapScan"]

MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 2, 3, 4, 5, 6, 15
_MAX_OPCODE = 0x0F
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_MSG_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


class _Damage(Exception):
    """The data cannot be framed from this offset on (truncation or garbage)."""


def _decompress(name: str, packed: bytes, partial: bool) -> bytes:
    """Decompress chunk data; ``partial``: the data is cut off, return the decodable prefix."""
    if name == "":
        return packed
    if name == "lz4":
        from lz4.frame import LZ4FrameDecompressor, decompress

        return LZ4FrameDecompressor().decompress(packed) if partial else decompress(packed)
    if name == "zstd":
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            from backports import zstd  # installed with rosbags
        return zstd.ZstdDecompressor().decompress(packed) if partial else zstd.decompress(packed)
    raise ValueError(f"unsupported chunk compression {name!r}")


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise struct.error("string runs past its record")
    return buf[pos + 4:end].decode("utf-8"), end


@dataclass(frozen=True)
class _Channel:
    topic: str
    msgtype: str
    encoding: str
    msgdef: str


class McapScan:
    """Front-to-back reader of one MCAP file.

    After construction, :attr:`channels`, :attr:`counts` and :attr:`problems` describe what a
    full scan could read; :meth:`records` re-reads the messages.

    Args:
        path: the ``.mcap`` file.

    Raises:
        ValueError: the file does not start with the MCAP magic (not an MCAP file at all).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.channels: dict[int, _Channel] = {}
        self._schemas: dict[int, tuple[str, str, str]] = {}
        self.counts: dict[int, int] = {}
        self.problems: list[str] = []
        self.readable_bytes = 0
        with self.path.open("rb") as f:
            if f.read(8) != MAGIC:
                raise ValueError(f"{self.path} does not start with the MCAP magic bytes")
            for channel_id, _, _ in self._scan(f, record_problems=True, want=None):
                self.counts[channel_id] = self.counts.get(channel_id, 0) + 1

    def records(self, channel_ids: set[int]) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(channel id, log time ns, raw CDR)`` of the wanted channels."""
        with self.path.open("rb") as f:
            f.seek(8)
            yield from self._scan(f, record_problems=False, want=channel_ids)

    # ------------------------------------------------------------------ scanning

    def _read(self, f: BinaryIO, n: int, what: str) -> bytes:
        pos = f.tell()
        data = f.read(n)
        if len(data) != n:
            raise _Damage(f"{what} at byte {pos} is cut off ({len(data)} of {n} bytes present)")
        return data

    def _scan(self, f: BinaryIO, *, record_problems: bool, want: set[int] | None) -> Iterator[tuple[int, int, bytes]]:
        while True:
            start = f.tell()
            op = f.read(1)
            if not op:
                if record_problems:
                    self.problems.append(
                        f"file ends at byte {start} without an MCAP footer (recording interrupted or "
                        "file truncated); everything before it was read")
                    self.readable_bytes = start
                return
            opcode = op[0]
            try:
                if not (1 <= opcode <= _MAX_OPCODE or opcode >= 0x80):  # 0x80+: private records
                    raise _Damage(f"unknown record opcode 0x{opcode:02x} at byte {start} (corrupt data)")
                (length,) = _U64.unpack(self._read(f, 8, "record length"))
                if start + 9 + length > self.size:
                    raise _Damage(
                        f"record at byte {start} claims {length} bytes but only {self.size - start - 9} remain")
                body = self._read(f, length, "record")
            except _Damage as exc:
                if record_problems:
                    self.problems.append(f"{exc}; the remaining {self.size - start} bytes are unreadable")
                    self.readable_bytes = start
                if opcode == _OP_CHUNK and start + 9 <= self.size:  # a chunk cut off by the end of the file
                    f.seek(start + 9)
                    yield from self._chunk(f.read(), start, record_problems, want, partial=True)
                return
            if opcode in (_OP_FOOTER, _OP_DATA_END):
                if record_problems:
                    self.readable_bytes = self.size
                return
            if opcode == _OP_CHUNK:
                yield from self._chunk(body, start, record_problems, want, partial=False)
            else:
                yield from self._record(opcode, body, start, record_problems, want)

    def _chunk(self, body: bytes, start: int, record_problems: bool, want: set[int] | None,
               *, partial: bool) -> Iterator[tuple[int, int, bytes]]:
        try:
            _, _, raw_size, crc = struct.unpack_from("<QQQI", body, 0)
            compression, pos = _string(body, 28)
            (packed_size,) = _U64.unpack_from(body, pos)
            data = _decompress(compression, body[pos + 8:pos + 8 + packed_size], partial)
            if not partial and (len(data) != raw_size or (crc and crc32(data) != crc)):
                raise ValueError("checksum or size mismatch")
        except Exception as exc:  # noqa: BLE001 - any decoder error loses this chunk, not the file
            if record_problems:
                self.problems.append(f"chunk at byte {start} is corrupt ({type(exc).__name__}: {exc}); skipped")
            return
        found: list[tuple[int, int, bytes]] = []
        pos = 0
        while pos + 9 <= len(data):
            opcode = data[pos]
            (length,) = _U64.unpack_from(data, pos + 1)
            inner = data[pos + 9:pos + 9 + length]
            if len(inner) != length:
                if record_problems and not partial:
                    self.problems.append(f"chunk at byte {start} holds a cut-off record; its tail was skipped")
                break
            found.extend(self._record(opcode, inner, start, record_problems, want))
            pos += 9 + length
        found.sort(key=lambda m: m[1])  # rosbag2 yields messages of a chunk in log-time order
        if partial and record_problems:
            self.problems.append(f"chunk at byte {start} is cut off; {len(found)} message(s) recovered from "
                                 "its complete part")
        yield from found

    def _record(self, opcode: int, body: bytes, start: int, record_problems: bool,
                want: set[int] | None) -> Iterator[tuple[int, int, bytes]]:
        try:
            if opcode == _OP_SCHEMA and record_problems:
                (schema_id,) = _U16.unpack_from(body, 0)
                name, pos = _string(body, 2)
                encoding, pos = _string(body, pos)
                (n,) = _U32.unpack_from(body, pos)
                self._schemas[schema_id] = (name, encoding, body[pos + 4:pos + 4 + n].decode("utf-8"))
            elif opcode == _OP_CHANNEL and record_problems:
                channel_id, schema_id = struct.unpack_from("<HH", body, 0)
                topic, _ = _string(body, 4)
                name, encoding, msgdef = self._schemas.get(schema_id, ("", "", ""))
                self.channels[channel_id] = _Channel(topic, name, encoding, msgdef)
            elif opcode == _OP_MESSAGE:
                channel_id, _, log_time, _ = _MSG_HEAD.unpack_from(body, 0)
                if want is None or channel_id in want:
                    yield channel_id, log_time, body[_MSG_HEAD.size:]
        except (struct.error, UnicodeDecodeError) as exc:
            if record_problems:
                self.problems.append(f"malformed record (opcode {opcode}) near byte {start}: {exc}; skipped")
