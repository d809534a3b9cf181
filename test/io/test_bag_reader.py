"""Tolerant bag reading (BagReader) and the scans that recover damaged MCAP and SQLite3 bags."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ivf_perception.io._mcap_scan import McapScan
from ivf_perception.io._sqlite_scan import SqliteScan
from ivf_perception.io.bag import BagFrame, get_typestore, write_image_bag
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.io.errors import BagError, BagNotFoundError
from ivf_perception.io.image_codec import header_stamp_ns, image_to_numpy, make_header, numpy_to_image

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


def _frames(n: int, size: tuple[int, int] = (24, 32)) -> list[BagFrame]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        out.append(BagFrame("/cam/rgb", T0 + i * 100 * MS, "rgb", rng.integers(0, 255, (*size, 3), np.uint8), "rgb8"))
        out.append(BagFrame("/cam/ir", T0 + i * 100 * MS + MS, "ir", rng.integers(0, 255, size, np.uint16), "mono16"))
    return out


def _data_file(bag: Path) -> Path:
    (data,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    return data


def _truncate(path: Path, fraction: float) -> None:
    with path.open("r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_intact_bags_read_normally(tmp_path, storage):
    frames = _frames(5)
    bag = write_image_bag(tmp_path / "b", frames, storage=storage, distro="humble")
    with BagReader(bag) as reader:
        assert reader.topics == {"/cam/rgb": "sensor_msgs/msg/Image", "/cam/ir": "sensor_msgs/msg/Image"}
        assert reader.counts == {"/cam/rgb": 5, "/cam/ir": 5}
        msgs = list(reader.messages())
        assert not reader.report.damaged and reader.report.storage == storage and reader.report.lines() == []
    assert [m.stamp_ns for m in msgs] == [f.stamp_ns for f in frames]
    for m, f in zip(msgs, frames):
        np.testing.assert_array_equal(image_to_numpy(m.msg), f.array)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bags_yield_a_prefix_and_say_what_was_lost(tmp_path, storage):
    frames = _frames(12)
    bag = write_image_bag(tmp_path / "b", frames, storage=storage)
    _truncate(_data_file(bag), 0.6)
    with BagReader(bag) as reader:
        msgs = list(reader.messages())
        report = reader.report
    assert report.recovered and report.damaged and report.open_error
    assert 0 < len(msgs) < len(frames)
    assert [m.stamp_ns for m in msgs] == [f.stamp_ns for f in frames[:len(msgs)]]  # a clean prefix, in order
    for m in msgs:
        frame = next(f for f in frames if f.stamp_ns == m.stamp_ns)
        np.testing.assert_array_equal(image_to_numpy(m.msg), frame.array)
    assert any("truncated" in line or "cut off" in line for line in report.lines())


def test_sqlite_scan_recovers_exactly_the_rows_sqlite_reads(tmp_path):
    bag = write_image_bag(tmp_path / "b", _frames(6, size=(40, 50)), storage="sqlite3")
    db = _data_file(bag)
    scan = SqliteScan(db)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id").fetchall()
        topics = dict(con.execute("SELECT id, name FROM topics").fetchall())
    assert [(t, s, bytes(d)) for t, s, d in rows] == list(scan.records(set(scan.topics)))
    assert {i: name for i, (name, _) in scan.topics.items()} == topics and scan.problems == []
    assert "sensor_msgs/msg/Image" in scan.definitions


def test_truncated_zstd_mcap_chunk_is_partly_recovered(tmp_path):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    ts = get_typestore()
    cls = ts.types["sensor_msgs/msg/Image"]
    bag = tmp_path / "z"
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection("/cam/rgb", "sensor_msgs/msg/Image", typestore=ts)
        rng = np.random.default_rng(1)
        for i in range(20):
            msg = numpy_to_image(rng.integers(0, 255, (64, 64, 3), np.uint8), "rgb8",
                                 header=make_header(T0 + i, "c", msg_type=cls), msg_type=cls)
            writer.write(conn, T0 + i, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    _truncate(_data_file(bag), 0.5)
    scan = McapScan(_data_file(bag))
    assert 0 < scan.counts[1] < 20 and any("recovered from its complete part" in p for p in scan.problems)
    with BagReader(bag) as reader:
        stamps = [header_stamp_ns(m.msg) for m in reader.messages()]
    assert stamps == [T0 + i for i in range(len(stamps))]


def test_corrupt_chunk_mid_read_hands_over_to_the_scan(tmp_path):
    """The normal reader opens the bag (footer intact) but fails on a corrupt chunk; reading goes on behind it."""
    rng = np.random.default_rng(0)
    frames = [BagFrame("/cam/rgb", T0 + i * MS, "c", rng.integers(0, 255, (480, 640, 3), np.uint8), "rgb8")
              for i in range(6)]
    bag = write_image_bag(tmp_path / "b", frames)  # rosbags closes a chunk after ~1 MiB: 3 chunks of 2 frames
    data = _data_file(bag)
    raw = bytearray(data.read_bytes())
    start_time = (T0 + 2 * MS).to_bytes(8, "little")
    found = raw.find(start_time)  # the second chunk's message start time, right after its opcode and length
    while found != -1 and raw[found - 9] != 0x06:
        found = raw.find(start_time, found + 1)
    assert found != -1, "test setup: second chunk not found"
    start = found + 8 + 8 + 8  # start time, end time, uncompressed size, then the CRC
    raw[start:start + 4] = b"\xde\xad\xbe\xef"  # its CRC no longer matches
    data.write_bytes(bytes(raw))
    with BagReader(bag) as reader:
        assert not reader.report.recovered  # opened normally
        stamps = [m.stamp_ns for m in reader.messages()]
        lines = reader.report.lines()
    assert stamps == [T0, T0 + MS, T0 + 4 * MS, T0 + 5 * MS]
    assert any("continued by scanning" in line for line in lines) and any("corrupt" in line for line in lines)


def test_undecodable_messages_are_counted_not_fatal(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = get_typestore()
    cls = ts.types["sensor_msgs/msg/Image"]
    with Writer(tmp_path / "b", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/cam/rgb", "sensor_msgs/msg/Image", typestore=ts)
        header = make_header(T0, "c", msg_type=cls)
        good = numpy_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8", header=header, msg_type=cls)
        writer.write(conn, T0, ts.serialize_cdr(good, "sensor_msgs/msg/Image"))
        writer.write(conn, T0 + 1, b"\x00\x01\x00\x00 not an image")
        writer.write(conn, T0 + 2, ts.serialize_cdr(good, "sensor_msgs/msg/Image"))
    with BagReader(tmp_path / "b") as reader:
        assert len(list(reader.messages())) == 2
        assert reader.report.undecodable == {"/cam/rgb": 1} and reader.report.read == {"/cam/rgb": 2}
        assert "could not be decoded" in reader.report.lines()[0]


def test_paths_that_are_not_bags(tmp_path):
    with pytest.raises(BagNotFoundError):
        BagReader(tmp_path / "missing")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    with pytest.raises(BagError, match="not a rosbag2 folder.*readme.txt"):
        BagReader(tmp_path / "notes")
    (tmp_path / "fake.mcap").write_bytes(b"\x00" * 64)
    with pytest.raises(BagError, match="cannot read bag"):
        BagReader(tmp_path / "fake.mcap")
    bag = write_image_bag(tmp_path / "b", _frames(1))
    with BagReader(bag) as reader, pytest.raises(BagError, match="/nope.*not in bag.*/cam/rgb"):
        list(reader.records(["/nope"]))
