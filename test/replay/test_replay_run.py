"""Replay end to end on generated MCAP and SQLite3 bags with ground truth: output bag, metrics, report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from replay_helpers import CONFIG, FRAMES, MICRO

from ivf_perception.cli.replay import main as replay_main
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.io.image_codec import header_stamp_ns, image_to_numpy
from ivf_perception.io.stats_msg import FUSION_STATS_MSGTYPE
from ivf_perception.metrics import FUSION_METRIC_NAMES
from ivf_perception.replay.runner import run_replay
from ivf_perception.scenes import write_scene_folder

SECTIONS = ("Headline", "Fusion metrics", "Segmentation", "Latency and throughput", "Pairing", "Input problems",
            "Best and worst frames", "Configuration", "Software")


def _input_stamps(bag: Path, topic: str) -> list[int]:
    with BagReader(bag) as reader:
        return [header_stamp_ns(m.msg) for m in reader.messages([topic])]


class _Checker(HTMLParser):
    """Counts open/close tags, so the report is at least well nested."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in ("meta", "img", "br", "rect", "line", "circle"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("rect", "line", "circle"):
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.mark.parametrize("bag_name", ["mcap_bag", "sqlite_bag"])
def test_replay_writes_bag_metrics_and_report(bag_name, request, micro_engine, options):
    bag = request.getfixturevalue(bag_name)
    result = run_replay(options(bag), micro_engine)
    assert (result.status, result.frames, result.exit_code) == ("complete", FRAMES, 0)
    out = result.out

    # output bag: readable (normally, not recovered), every output per frame, input header stamps kept
    rgb_stamps = _input_stamps(bag, "/camera/rgb/image")
    with BagReader(out / "bag") as reader:
        assert not reader.report.damaged and reader.report.storage == "mcap"
        topics = result.summary["configuration"]["output_topics"]
        assert reader.topics[topics["stats"]] == FUSION_STATS_MSGTYPE
        for key in ("fused", "labels", "overlay"):
            msgs = list(reader.messages([topics[key]]))
            assert [header_stamp_ns(m.msg) for m in msgs] == rgb_stamps
            assert {m.msg.header.frame_id for m in msgs} == {"camera_rgb_optical_frame"}
            assert image_to_numpy(msgs[0].msg).shape[:2] == (CONFIG.height, CONFIG.width)
        assert {m.msg.encoding for m in reader.messages([topics["labels"]])} == {"mono8"}
        stats = [m.msg for m in reader.messages([topics["stats"]])]
    assert [header_stamp_ns(s) for s in stats] == rgb_stamps
    assert [s.processed for s in stats] == list(range(1, FRAMES + 1))
    assert all(int(np.sum(s.class_pixel_counts)) == CONFIG.height * CONFIG.width for s in stats)
    assert stats[-1].variant == "s4fusion" and stats[-1].preset == "test" and stats[-1].inference_ms > 0

    # metrics: fusion overall/day/night, mIoU from the bag's label topic, latencies, pairing
    s = json.loads((out / "metrics.json").read_text())
    assert s["status"] == "complete" and s["frames"] == FRAMES and len(s["per_frame"]) == FRAMES
    assert set(s["fusion"]["all"]) == set(FUSION_METRIC_NAMES)
    assert s["day_night"]["day"] + s["day_night"]["night"] == FRAMES
    assert 0.0 <= s["segmentation"]["all"]["mIoU"] <= 1.0 and s["ground_truth_frames"] == FRAMES
    assert s["configuration"]["ground_truth"].startswith("label topic /camera/rgb/labels")
    for stage in ("read", "decode", "inference", "write", "pipeline", "metrics"):
        assert {"p50", "p95", "p99"} <= set(s["latency_ms"][stage])
    assert s["pairing"]["paired"] == FRAMES and s["pairing"]["labels_matched"] == FRAMES
    assert s["software"]["rosbags"] and s["configuration"]["pairing"]["slop_s"] == 0.05

    # reports: both hold every section; the HTML is self-contained and well nested
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in md and f"<h2>{section}</h2>" in html
    assert html.count("<svg") == 3 and "data:image/png;base64," in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    checker = _Checker()
    checker.feed(html)
    assert not checker.errors and checker.stack == []


def test_fusion_stats_deserialise_with_rclpy(mcap_bag, micro_engine, options):
    """The custom message in the output bag is byte-compatible with the built interface package."""
    msgs = pytest.importorskip("ivf_perception_msgs.msg", reason="ivf_perception_msgs interface package not built")
    serialization = pytest.importorskip("rclpy.serialization")
    result = run_replay(options(mcap_bag, max_frames=2, fusion_metrics=False), micro_engine)
    with BagReader(result.out / "bag") as reader:
        topic = result.summary["configuration"]["output_topics"]["stats"]
        raw = [r.raw for r in reader.records([topic])]
    stats = serialization.deserialize_message(raw[-1], msgs.FusionStats)
    assert stats.processed == 2 and stats.variant == "s4fusion" and len(stats.class_names) == 9


def test_labels_folder_matches_the_bag_label_topic(mcap_bag, micro_engine, options, tmp_path):
    """--labels DIR (generic layout with index.json) gives the same mIoU as the bag's label topic."""
    folder = write_scene_folder(tmp_path / "scenes", FRAMES, CONFIG)
    from_topic = run_replay(options(mcap_bag, out=tmp_path / "a", fusion_metrics=False), micro_engine)
    from_folder = run_replay(options(mcap_bag, out=tmp_path / "b", fusion_metrics=False, labels_dir=folder / "labels"),
                             micro_engine)
    assert from_folder.summary["configuration"]["ground_truth"].startswith("label folder")
    assert from_folder.summary["ground_truth_frames"] == FRAMES
    assert from_folder.summary["segmentation"]["all"]["mIoU"] == from_topic.summary["segmentation"]["all"]["mIoU"]


def test_cli_replay_with_png_copy_inputs_and_params_file(mcap_bag, tmp_path, capsys):
    params = tmp_path / "node.yaml"
    params.write_text("/**:\n  ros__parameters:\n    slop_s: 0.02\n    queue_size: 4\n    overlay_alpha: 0.3\n")
    out = tmp_path / "out"
    code = replay_main([str(mcap_bag), "--out", str(out), "--png", "--copy-inputs", "--params-file", str(params),
                        "--max-frames", "3", *MICRO])
    assert code == 0
    printed = capsys.readouterr().out
    assert "complete: 3 frame(s)" in printed and "mIoU" in printed
    for kind in ("fused", "labels", "overlay"):
        assert len(list((out / "png" / kind).glob("*.png"))) == 3
    with BagReader(out / "bag") as reader:
        assert {"/camera/rgb/image", "/camera/thermal/image", "/camera/rgb/labels"} <= set(reader.topics)
        assert reader.counts["/ivf_perception/fused/image"] == 3
    s = json.loads((out / "metrics.json").read_text())
    assert s["configuration"]["pairing"]["slop_s"] == 0.02 and s["configuration"]["pairing"]["queue_size"] == 4
    assert str(params) in s["configuration"]["pairing"]["source"]


def test_pairing_parameters_come_from_the_node_params_file(mcap_bag, tmp_path, capsys):
    """A slop smaller than the bag's stamp jitter pairs nothing: report written, exit code 1."""
    params = tmp_path / "node.yaml"
    params.write_text("fusion_node:\n  ros__parameters:\n    slop_s: 0.0\n")
    out = tmp_path / "out"
    code = replay_main([str(mcap_bag), "--out", str(out), "--params-file", str(params), *MICRO])
    assert code == 1
    s = json.loads((out / "metrics.json").read_text())
    assert s["status"] == "no pairs" and s["pairing"]["paired"] == 0
    assert s["pairing"]["unmatched_rgb"] + s["pairing"]["unmatched_thermal"] > 0
    assert "No RGB/thermal pair was formed" in (out / "report.md").read_text()


def test_replay_in_batches_gives_the_same_frames(mcap_bag, micro_engine, options, tmp_path):
    one = run_replay(options(mcap_bag, out=tmp_path / "one", fusion_metrics=False), micro_engine)
    batched = run_replay(options(mcap_bag, out=tmp_path / "batched", fusion_metrics=False, batch_size=4), micro_engine)
    assert [f["name"] for f in batched.summary["per_frame"]] == [f["name"] for f in one.summary["per_frame"]]
    assert batched.summary["segmentation"]["all"]["mIoU"] == pytest.approx(one.summary["segmentation"]["all"]["mIoU"])


def test_cli_replay_with_the_onnxruntime_backend_matches_torch(mcap_bag, tmp_path, test_weights, onnx_cache):
    """--backend onnxruntime with ordinary weights reuses the cached export of the bag's 64x96 frames
    (the session fixture's file) and writes the same labels as the eager engine."""
    cache, onnx_path = onnx_cache
    common = [str(mcap_bag), "--weights", str(test_weights), "--device", "cpu", "--threads", "1", "--no-progress",
              "--max-frames", "3", "--no-fusion-metrics", "--png"]
    assert replay_main([*common, "--out", str(tmp_path / "ort"), "--backend", "onnxruntime",
                        "--backend-cache-dir", str(cache)]) == 0
    assert replay_main([*common, "--out", str(tmp_path / "torch")]) == 0
    assert sorted((cache / "onnx").glob("*.onnx")) == [onnx_path], "no second export"
    ort = sorted((tmp_path / "ort" / "png" / "labels").glob("*.png"))
    ref = sorted((tmp_path / "torch" / "png" / "labels").glob("*.png"))
    assert len(ort) == len(ref) == 3
    for a, b in zip(ort, ref):
        assert (cv2.imread(str(a), cv2.IMREAD_UNCHANGED) == cv2.imread(str(b), cv2.IMREAD_UNCHANGED)).mean() >= 0.999
