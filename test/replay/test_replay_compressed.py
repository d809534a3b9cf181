"""Replay, compare and extract read sensor_msgs/CompressedImage bags (issue 14 part 2).

Bags are real rosbag2 files written with rosbags: the same generated scenes once raw (``rgb8`` +
``mono16``) and once as image_transport writes them (PNG/JPEG RGB, 16-bit PNG thermal), so the
compressed path can be checked against the raw one frame by frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from replay_helpers import CONFIG, FRAMES, write_bag

from ivf_perception.cli.compare import main as compare_main
from ivf_perception.io.image_files import read_image
from ivf_perception.replay.extract import ExtractOptions, extract_dataset
from ivf_perception.replay.runner import run_replay
from ivf_perception.scenes import generate_scene

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
RGB_PNG = "compressed:rgb8; png compressed bgr8"
RGB_JPEG = "compressed:bgr8; jpeg compressed bgr8"
THERMAL_PNG16 = "compressed:mono16; png compressed mono16"


def _scene_bag(path: Path, rgb_encoding: str, thermal_encoding: str, broken: dict[int, int] | None = None) -> Path:
    """FRAMES generated scenes at 10 Hz; ``broken`` cuts frame i's compressed RGB data to n bytes."""
    entries = []
    for i in range(FRAMES):
        scene = generate_scene(i, CONFIG)
        stamp = T0 + i * 100 * MS
        rgb: np.ndarray = scene.rgb
        if broken and i in broken:
            rgb = _encoded(scene.rgb, rgb_encoding)[: broken[i]]
        rgb_topic = "/camera/color/image_raw" + ("/compressed" if rgb_encoding.startswith("compressed:") else "")
        thermal_topic = "/flir_boson/image_raw" + ("/compressed" if thermal_encoding.startswith("compressed:") else "")
        entries.append((rgb_topic, stamp, stamp, rgb, rgb_encoding))
        entries.append((thermal_topic, stamp + MS, stamp, scene.thermal16, thermal_encoding))
    return write_bag(path, entries)


def _encoded(rgb: np.ndarray, encoding: str) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg" if "jpeg" in encoding else ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.reshape(-1)


def _pngs(out: Path, kind: str) -> dict[str, np.ndarray]:
    return {p.stem: read_image(p) for p in sorted((out / "png" / kind).glob("*.png"))}


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compressed_bags")
    return {"raw": _scene_bag(root / "raw", "rgb8", "mono16"),
            "png": _scene_bag(root / "png", RGB_PNG, THERMAL_PNG16),
            "jpeg_cut": _scene_bag(root / "jpeg_cut", RGB_JPEG, THERMAL_PNG16, broken={2: 200, 4: 0})}


def test_png_bag_replays_exactly_like_the_raw_mono16_bag(bags, micro_engine, options, tmp_path):
    """Lossless PNG RGB + 16-bit PNG thermal decode to the raw bag's arrays, so every output is equal."""
    raw = run_replay(options(bags["raw"], out=tmp_path / "raw", png=True), micro_engine)
    png = run_replay(options(bags["png"], out=tmp_path / "png", png=True, copy_inputs=True), micro_engine)
    assert (raw.frames, png.frames, png.exit_code) == (FRAMES, FRAMES, 0)
    topics = png.summary["configuration"]["topics"]
    assert (topics["rgb"], topics["thermal"]) == ("/camera/color/image_raw/compressed",
                                                  "/flir_boson/image_raw/compressed")
    assert png.summary["skipped_frames"] == []
    for kind in ("fused", "labels", "overlay"):
        a, b = _pngs(tmp_path / "raw", kind), _pngs(tmp_path / "png", kind)
        assert len(a) == FRAMES and a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{kind}/{name}")
    # the copied inputs keep their CompressedImage type in the output bag
    from ivf_perception.io.bag import list_topics

    copied = list_topics(tmp_path / "png" / "bag")
    assert copied["/flir_boson/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"


def test_truncated_jpeg_frames_are_counted_and_skipped(bags, micro_engine, options, tmp_path):
    result = run_replay(options(bags["jpeg_cut"], out=tmp_path / "out"), micro_engine)
    assert (result.status, result.frames, result.exit_code) == ("complete", FRAMES - 2, 0)
    skipped = result.summary["skipped_frames"]
    assert [s["index"] for s in skipped] == [2, 4]
    assert "RGB image: compressed image ('bgr8; jpeg compressed bgr8', 200 bytes) is corrupt or truncated" \
        in skipped[0]["reason"]
    assert "has no data" in skipped[1]["reason"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["skipped_frames"]) == 2 and metrics["frames"] == FRAMES - 2
    assert "corrupt or truncated" in (tmp_path / "out" / "report.md").read_text()


def test_extract_from_a_compressed_bag_equals_the_raw_extraction(bags, tmp_path):
    outs = {}
    for key in ("raw", "png"):
        outs[key] = tmp_path / key
        result = extract_dataset(ExtractOptions(bag=bags[key], out=outs[key], progress=False))
        assert (result.status, result.written, result.skipped) == ("complete", FRAMES, [])
    for sub in ("vi", "ir"):
        raw = sorted((outs["raw"] / sub).glob("*.png"))
        assert [p.name for p in raw] == sorted(p.name for p in (outs["png"] / sub).glob("*.png"))
        for path in raw:
            a, b = read_image(path), read_image(outs["png"] / sub / path.name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    index = json.loads((outs["png"] / "index.json").read_text())
    assert {f["thermal_encoding"] for f in index["frames"]} == {"mono16"}
    assert read_image(next((outs["png"] / "ir").glob("*.png"))).dtype == np.uint16
    cut = extract_dataset(ExtractOptions(bag=bags["jpeg_cut"], out=tmp_path / "cut", progress=False))
    assert (cut.written, len(cut.skipped)) == (FRAMES - 2, 2)
    assert "corrupt or truncated" in cut.skipped[0]["reason"]


def test_compare_reads_a_compressed_bag(bags, tmp_path):
    out = tmp_path / "cmp"
    code = compare_main([str(bags["jpeg_cut"]), "--out", str(out), "--a-variant", "test_s4fusion", "--a-weights",
                         "none", "--b-variant", "test_s4fusion", "--b-weights", "none", "--device", "cpu",
                         "--threads", "1", "--no-progress"])
    assert code == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["same_frames"] and data["a"]["status"] == data["b"]["status"] == "complete"
    for side in ("a", "b"):
        metrics = json.loads((out / side / "metrics.json").read_text())
        assert metrics["frames"] == FRAMES - 2 and len(metrics["skipped_frames"]) == 2


def test_play_publishes_compressed_topics_by_default(bags) -> None:
    """``ivf-perception play`` without ``--topics`` picks CompressedImage topics too, with their type."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
    from sensor_msgs.msg import CompressedImage

    from ivf_perception.nodes.bag_player import BagPlayer

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=99)
    node = rclpy.create_node("player_probe", context=context)
    try:
        player = BagPlayer(node, bags["png"], clock=False)
        assert player.topics == ["/camera/color/image_raw/compressed", "/flir_boson/image_raw/compressed"]
        assert all(p.msg_type is CompressedImage for p in player._publishers.values())
    finally:
        node.destroy_node()
        context.try_shutdown()
