"""extract: bag → dataset folder → FolderPairDataset gives the same frames as the bag's pairs; resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from replay_helpers import CONFIG, FRAMES, MICRO, write_bag

from ivf_perception.cli.extract import main as extract_main
from ivf_perception.io.bag_decode import decode_pair
from ivf_perception.io.bag_pairing import FrameStream
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.io.bag_topics import select_topics
from ivf_perception.io.image_files import read_image
from ivf_perception.replay.extract import ExtractOptions, extract_dataset
from ivf_perception.replay.outputs import OutputExistsError
from ivf_perception.replay.params import NodeParams, load_node_params
from ivf_perception.scenes import generate_scene


def _bag_pairs(bag: Path) -> list:
    with BagReader(bag) as reader:
        topics = select_topics(reader)
        return [(p.name, decode_pair(p)) for p in FrameStream(reader, topics, NodeParams().config)]


def test_extract_round_trip_files_equal_the_bag_frames(mcap_bag, tmp_path):
    """The written files hold exactly the decoded frames (the training package's reader of such a
    folder is tested in training/test/test_dataset_extract.py: this tree never imports it)."""
    out = tmp_path / "ds"
    result = extract_dataset(ExtractOptions(bag=mcap_bag, out=out, progress=False))
    assert (result.status, result.written, result.kept, result.exit_code) == ("complete", FRAMES, 0, 0)
    pairs = _bag_pairs(mcap_bag)
    assert sorted(p.stem for p in (out / "vi").glob("*.png")) == [name for name, _ in pairs]
    assert len(pairs) == FRAMES
    for name, frame in pairs:
        np.testing.assert_array_equal(read_image(out / "vi" / f"{name}.png"), frame.rgb)
        np.testing.assert_array_equal(read_image(out / "ir" / f"{name}.png"), frame.thermal)
        np.testing.assert_array_equal(read_image(out / "labels" / f"{name}.png"), frame.labels)
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["source"]["topics"]["thermal"] == "/camera/thermal/image"
    assert [f["name"] for f in index["frames"]] == [name for name, _ in pairs]
    assert all(abs(f["skew_ms"]) <= 3.0 and f["has_labels"] for f in index["frames"])


def test_extract_keeps_16_bit_thermal(sqlite_bag, tmp_path):
    out = tmp_path / "ds"
    extract_dataset(ExtractOptions(bag=sqlite_bag, out=out, progress=False, max_frames=2))
    (name, frame), _ = _bag_pairs(sqlite_bag)[:2]
    ir = read_image(out / "ir" / f"{name}.png")
    assert ir.dtype == np.uint16 and frame.thermal_encoding == "mono16"
    np.testing.assert_array_equal(ir, frame.thermal)


def test_extract_resumes_and_keeps_the_index_consistent(mcap_bag, tmp_path, capsys):
    out = tmp_path / "ds"
    args = [str(mcap_bag), "--out", str(out), "--no-progress"]
    assert extract_main(args + ["--max-frames", "2"]) == 0
    first = json.loads((out / "index.json").read_text())
    assert len(first["frames"]) == 2
    victim = first["frames"][1]["name"]
    (out / "vi" / f"{victim}.png").unlink()  # e.g. a file lost since: its frame is written again
    (out / "vi" / f".{victim}.partial.png").write_bytes(b"half")  # a write cut short earlier
    assert extract_main(args) == 0
    assert f"{FRAMES - 1} frame(s) written, 1 already present" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert len(index["frames"]) == FRAMES and index["complete"]
    assert sorted(p.stem for p in (out / "vi").iterdir()) == [f["name"] for f in index["frames"]]
    assert extract_main(args) == 0
    assert f"0 frame(s) written, {FRAMES} already present" in capsys.readouterr().out


def test_extract_refuses_other_settings_or_foreign_folders(mcap_bag, tmp_path):
    out = tmp_path / "ds"
    extract_dataset(ExtractOptions(bag=mcap_bag, out=out, progress=False, max_frames=1))
    other = ExtractOptions(bag=mcap_bag, out=out, progress=False, params=load_node_params(None, slop_s=0.01))
    with pytest.raises(OutputExistsError, match="other topics or pairing"):
        extract_dataset(other)
    other.overwrite = True
    assert extract_dataset(other).written == FRAMES
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "x.jpg").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="not empty"):
        extract_dataset(ExtractOptions(bag=mcap_bag, out=foreign, progress=False))


def test_extract_interrupted_then_resumed(mcap_bag, tmp_path, monkeypatch):
    import ivf_perception.replay.extract as extract_module

    out = tmp_path / "ds"
    real_write = extract_module._write_atomic
    calls = {"n": 0}

    def flaky_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 8:  # during the third frame (labels, ir, vi per frame)
            raise KeyboardInterrupt
        real_write(path, array)

    monkeypatch.setattr(extract_module, "_write_atomic", flaky_write)
    result = extract_dataset(ExtractOptions(bag=mcap_bag, out=out, progress=False))
    assert (result.status, result.written, result.exit_code) == ("interrupted", 2, 130)
    index = json.loads((out / "index.json").read_text())
    assert not index["complete"] and len(index["frames"]) == 2
    monkeypatch.setattr(extract_module, "_write_atomic", real_write)
    resumed = extract_dataset(ExtractOptions(bag=mcap_bag, out=out, progress=False))
    assert (resumed.written, resumed.kept) == (FRAMES - 2, 2)


def test_extract_cli_errors(mcap_bag, tmp_path, capsys):
    assert extract_main([str(mcap_bag), "--out", str(tmp_path / "o"), "--rgb-topic", "/x", *MICRO[-1:]]) == 2
    assert "/x is not in bag" in capsys.readouterr().err


def test_undecodable_frames_are_skipped_and_listed(tmp_path):
    t0, ms = 1_700_000_000 * 1_000_000_000, 1_000_000
    entries = []
    for i in range(3):
        scene = generate_scene(i, CONFIG)
        stamp = t0 + i * 100 * ms
        entries.append(("/cam/rgb/image", stamp, stamp, scene.rgb, "bayer_rggb8" if i == 1 else "rgb8"))
        entries.append(("/cam/thermal/image", stamp + ms, stamp + ms, scene.thermal, "mono8"))
    bag = write_bag(tmp_path / "bag", entries)
    result = extract_dataset(ExtractOptions(bag=bag, out=tmp_path / "ds", progress=False))
    assert (result.written, len(result.skipped)) == (2, 1)
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert len(index["frames"]) == 2 and "bayer_rggb8" in index["skipped"][0]["reason"]
    assert index["skipped"][0]["rgb_stamp_ns"] == t0 + 100 * ms
