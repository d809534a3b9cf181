"""Bad input: damaged, empty or unusual bags, missing and unsupported topics, an existing output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from replay_helpers import CONFIG, FRAMES, MICRO, write_bag

from ivf_perception.cli.replay import main as replay_main
from ivf_perception.io.bag import write_image_bag
from ivf_perception.io.bag_inputs import EmptyBagError
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.replay.outputs import OutputExistsError
from ivf_perception.replay.runner import run_replay
from ivf_perception.scenes import generate_scene

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def _truncate(bag: Path, fraction: float) -> None:
    (data,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    with data.open("r+b") as f:
        f.truncate(int(os.path.getsize(data) * fraction))


@pytest.mark.parametrize("bag_name", ["mcap_bag", "sqlite_bag"])
def test_truncated_bag_replays_what_is_readable(bag_name, request, copy_bag, tmp_path, capsys):
    bag = copy_bag(request.getfixturevalue(bag_name))
    _truncate(bag, 0.7)
    out = tmp_path / "out"
    assert replay_main([str(bag), "--out", str(out), "--no-fusion-metrics", *MICRO]) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert 0 < s["frames"] < FRAMES
    assert s["bag"]["read"]["recovered"] and s["bag"]["read"]["damaged"]
    assert "truncated" in " ".join(s["bag"]["read"]["lines"]) or "cut off" in " ".join(s["bag"]["read"]["lines"])
    assert "could not be opened normally" in capsys.readouterr().err
    assert "## Input problems" in (out / "report.md").read_text()


def test_bag_without_metadata_yaml_is_read_by_scanning(mcap_bag, copy_bag, micro_engine, options):
    """A recording that crashed before writing metadata.yaml."""
    bag = copy_bag(mcap_bag)
    (bag / "metadata.yaml").unlink()
    result = run_replay(options(bag, fusion_metrics=False), micro_engine)
    assert result.frames == FRAMES and result.summary["bag"]["read"]["recovered"]


def test_unreadable_bag_exits_2_with_the_reason(tmp_path, capsys):
    bag = tmp_path / "garbage"
    bag.mkdir()
    (bag / "garbage_0.mcap").write_bytes(b"this is not an mcap file" * 10)
    assert replay_main([str(bag), "--out", str(tmp_path / "out"), *MICRO]) == 2
    err = capsys.readouterr().err
    assert "cannot read bag" in err and "MCAP" in err
    assert not (tmp_path / "out").exists()


def test_missing_bag_and_folder_that_is_not_a_bag(tmp_path, capsys):
    assert replay_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *MICRO]) == 2
    assert "bag not found" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    assert replay_main([str(tmp_path / "photos"), "--out", str(tmp_path / "o"), *MICRO]) == 2
    err = capsys.readouterr().err
    assert "not a rosbag2 folder" in err and "a.png" in err


def test_missing_topic_lists_the_bags_topics_and_types(mcap_bag, tmp_path, capsys):
    assert replay_main([str(mcap_bag), "--out", str(tmp_path / "o"), "--thermal-topic", "/flir/image_raw", *MICRO]) == 2
    err = capsys.readouterr().err
    assert "/flir/image_raw is not in bag" in err
    assert "/camera/rgb/image [sensor_msgs/msg/Image] (6 msgs)" in err and "/camera/thermal/image" in err


def test_compressed_frames_that_do_not_decode_are_skipped(tmp_path, micro_engine, options):
    """Raw pixels sent as a JPEG (a broken publisher): every frame is a counted skip, never a crash."""
    rgb = generate_scene(0, CONFIG).rgb
    bag = write_bag(tmp_path / "compressed", [
        ("/camera/color/image/compressed", T0, T0, rgb.reshape(-1), "compressed:jpeg"),
        ("/camera/thermal/image", T0, T0, rgb[:, :, 0], "mono8"),
    ])
    result = run_replay(options(bag), micro_engine)
    assert (result.status, result.frames, result.exit_code) == ("no pairs", 0, 1)
    (skip,) = result.summary["skipped_frames"]
    assert "RGB image: compressed image ('jpeg'" in skip["reason"] and "corrupt or truncated" in skip["reason"]


def test_empty_bag(tmp_path, micro_engine, options, capsys):
    bag = write_image_bag(tmp_path / "empty", [])
    with pytest.raises(EmptyBagError, match="holds no messages"):
        run_replay(options(bag), micro_engine)
    assert replay_main([str(bag), "--out", str(tmp_path / "o"), *MICRO]) == 2
    assert "holds no messages" in capsys.readouterr().err


def test_output_folder_that_exists_is_refused_unless_overwrite(mcap_bag, micro_engine, options, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_replay(options(mcap_bag, out=out, max_frames=1), micro_engine)
    result = run_replay(options(mcap_bag, out=out, max_frames=1, overwrite=True), micro_engine)
    assert result.frames == 1 and (out / "notes.txt").read_text() == "mine"  # only our outputs are replaced
    again = run_replay(options(mcap_bag, out=out, max_frames=2, overwrite=True), micro_engine)
    assert again.frames == 2


def test_non_monotonic_stamps_undecodable_frames_and_corrupt_messages(tmp_path, micro_engine, options):
    """Header stamps that step back (counted) or jump back (pairing reset, as the node does); a
    frame with an unsupported encoding and a message with corrupt bytes are skipped and listed."""
    scenes = [generate_scene(i, CONFIG) for i in range(4)]
    header_ms = [0, 100, 80, 200, 300, -5000, -4900, -4800]  # 80 ms steps back; then a 5 s jump back (bag loop)
    entries = []
    for i, stamp_ms in enumerate(header_ms):
        scene = scenes[i % 4]
        record = T0 + i * 100 * MS  # record times always grow
        stamp = T0 + stamp_ms * MS
        rgb_encoding = "bayer_rggb8" if i == 3 else "rgb8"
        entries.append(("/camera/rgb/image", record, stamp, scene.rgb, rgb_encoding))
        thermal = b"\x00\x01\x00\x00corrupt" if i == 6 else scene.thermal
        entries.append(("/camera/thermal/image", record + 1 * MS, stamp + 2 * MS, thermal, "mono8"))
    bag = write_bag(tmp_path / "odd", entries)
    result = run_replay(options(bag, fusion_metrics=False), micro_engine)
    s = result.summary
    assert result.exit_code == 0
    assert s["pairing"]["out_of_order_rgb"] == 1 and s["pairing"]["resets"] == 1
    assert "jumped back 5.300 s" in s["pairing"]["time_jumps"][0]
    assert [f["reason"].startswith("cannot decode: RGB image: unsupported image encoding 'bayer_rggb8'")
            for f in s["skipped_frames"]] == [True]
    assert s["bag"]["read"]["undecodable"] == {"/camera/thermal/image": 1}
    assert s["frames"] == 6  # 8 pairs - 1 undecodable frame - 1 pair lost to the corrupt thermal message
    md = (result.out / "report.md").read_text()
    assert "bayer_rggb8" in md and "could not be decoded" in md
    with BagReader(result.out / "bag") as reader:
        assert not reader.report.damaged  # an out-of-order input never damages the output bag
