"""The player feeds a generated 30 Hz sequence to the node in another process; outputs are checked
against the engine run offline on the same pairs.

Real processes and DDS throughout: ``ivf-perception play`` publishes the bag, the fusion node
(``python -m ivf_perception.nodes.fusion_node``) runs the micro test model from a weights file,
and this process subscribes to every output. No mocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rosgraph_helpers import REPO, params, wait_until
from sensor_msgs.msg import Image

from ivf_perception.engine import Engine
from ivf_perception.io import decode_rgb, decode_thermal, header_stamp_ns, image_to_numpy, read_image_messages
from ivf_perception.io.stats_msg import rclpy_fusion_stats_type
from ivf_perception.scenes import SceneConfig, write_scene_bag

FRAMES = 30
SLOP_S = 0.02
RGB_TOPIC, THERMAL_TOPIC = "/camera/rgb/image", "/camera/thermal/image"


def _stamp(msg) -> int:
    return header_stamp_ns(msg)


def test_played_sequence_is_fused_with_rgb_stamps_and_matches_offline_engine(
        graph, spawn, test_weights, tmp_path: Path) -> None:
    bag = write_scene_bag(tmp_path / "seq", FRAMES, SceneConfig(height=64, width=80, seed=3), fps=30.0,
                          label_topic=None, jitter_ns=3_000_000)
    FusionStats = rclpy_fusion_stats_type()
    fused = graph.subscribe(Image, "/fused/image")
    labels = graph.subscribe(Image, "/segmentation/labels")
    overlay = graph.subscribe(Image, "/segmentation/overlay")
    stats = graph.subscribe(FusionStats, "/fusion/stats")

    # started the documented way: the CLI with the shipped parameter file, overrides after --ros-args
    spawn([sys.executable, "-m", "ivf_perception.cli.main", "node",
           "--params-file", str(REPO / "config" / "fusion_node.yaml"),
           "--ros-args", *params(weights=str(test_weights), device="cpu", warmup_size=[64, 80], slop_s=SLOP_S,
                                 qos_reliability="reliable", qos_depth=50),
           "-r", f"rgb/image:={RGB_TOPIC}", "-r", f"thermal/image:={THERMAL_TOPIC}"], "node")
    wait_until(lambda: all(c.matched() for c in (fused, labels, overlay, stats)), 120, "the node's outputs")
    player = spawn([sys.executable, "-m", "ivf_perception.cli.main", "play", str(bag), "--topics", RGB_TOPIC,
                    THERMAL_TOPIC, "--wait-for-subscribers", "120", "--delay", "1"], "player")
    assert player.wait(timeout=180) == 0

    inputs = {(m.topic, _stamp(m.msg)): m.msg for m in read_image_messages(bag)}
    rgb_stamps = sorted(s for t, s in inputs if t == RGB_TOPIC)
    # the newest pair is never replaced, so the last RGB frame is always processed
    final = stats.wait_for(lambda ms: any(_stamp(m) == rgb_stamps[-1] for m in ms), 120, "the last frame's stats")[-1]
    assert final.received_rgb == FRAMES and final.received_thermal == FRAMES
    assert final.paired == FRAMES and final.failed == 0
    assert final.paired == final.processed + final.dropped_stale
    fused.wait_for(lambda ms: len(ms) >= final.processed, 30, "every fused image")
    labels.wait_for(lambda ms: len(ms) >= final.processed, 30, "every label image")
    assert len(fused.messages) == len(labels.messages) == len(stats.messages) == final.processed

    engine = Engine("auto", weights=test_weights, device="cpu")
    by_stamp = {_stamp(m): m for m in labels.messages}
    for s in stats.messages:
        rgb_ns, th_ns = _stamp(s), s.thermal_stamp.sec * 10**9 + s.thermal_stamp.nanosec
        rgb_msg, th_msg = inputs[(RGB_TOPIC, rgb_ns)], inputs[(THERMAL_TOPIC, th_ns)]
        # the pair is the same generated scene (jitter 3 ms << period 33 ms) and within slop
        assert rgb_stamps.index(rgb_ns) == sorted(st for t, st in inputs if t == THERMAL_TOPIC).index(th_ns)
        assert abs(th_ns - rgb_ns) <= SLOP_S * 1e9 and s.pair_skew_ms <= SLOP_S * 1e3
        assert s.header.frame_id == rgb_msg.header.frame_id == "camera_rgb_optical_frame"
        expected = engine.infer(decode_rgb(rgb_msg), decode_thermal(th_msg))
        got = by_stamp[rgb_ns]
        assert got.encoding == "mono8" and got.header.frame_id == rgb_msg.header.frame_id
        np.testing.assert_array_equal(image_to_numpy(got), expected.labels)
        assert list(s.class_pixel_counts) == np.bincount(expected.labels.ravel(), minlength=9).tolist()
    for m in fused.messages:
        assert m.encoding == "rgb8" and _stamp(m) in rgb_stamps
    last_fused = next(m for m in fused.messages if _stamp(m) == rgb_stamps[-1])
    last = engine.infer(decode_rgb(inputs[(RGB_TOPIC, rgb_stamps[-1])]),
                        decode_thermal(inputs[(THERMAL_TOPIC, final.thermal_stamp.sec * 10**9
                                               + final.thermal_stamp.nanosec)]))
    np.testing.assert_array_equal(image_to_numpy(last_fused), last.fused)
    # the overlay is computed because this process subscribes to it
    assert overlay.messages, "no overlay although subscribed"
    for m in overlay.messages:
        assert m.encoding == "rgb8" and _stamp(m) in rgb_stamps
    assert final.variant == "s4fusion" and final.preset == "test" and final.device == "cpu"
    assert list(final.class_names)[:3] == ["unlabelled", "car", "person"]
