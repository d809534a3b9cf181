"""Bag time (issue 14 part 6) across real processes: ``ivf-perception play`` publishes ``/clock``
at the record times, a node with ``use_sim_time`` measures latency on that clock, a node
without it falls back to receipt->published (the bag's stamps are years away from the wall
clock), and Ctrl-C ends a looping player with exit 0 and no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_helpers import diag_values, params, wait_until
from rosgraph_msgs.msg import Clock

from ivf_perception.io import header_stamp_ns, read_image_messages
from ivf_perception.io.stats_msg import rclpy_fusion_stats_type
from ivf_perception.scenes import SceneConfig, write_scene_bag

RGB, THERMAL = "/camera/rgb/image", "/camera/thermal/image"


def _ns(t) -> int:
    return t.sec * 1_000_000_000 + t.nanosec


def test_clock_from_the_bag_drives_sim_time_and_far_stamps_use_receipt(
        graph, spawn, test_weights, tmp_path: Path) -> None:
    frames = 20
    bag = write_scene_bag(tmp_path / "b", frames, SceneConfig(height=64, width=64, seed=2), fps=20.0,
                          label_topic=None)
    FusionStats = rclpy_fusion_stats_type()
    clock = graph.subscribe(Clock, "/clock", depth=500)
    sim_stats, wall_stats = graph.subscribe(FusionStats, "/sim/fusion/stats"), graph.subscribe(FusionStats,
                                                                                               "/wall/fusion/stats")
    diagnostics = graph.subscribe(DiagnosticArray, "/diagnostics", depth=500)
    common = [*params(weights=str(test_weights), device="cpu", warmup_size=[64, 64], qos_reliability="reliable",
                      qos_depth=50, diagnostics_period_s=0.2),
              "-r", f"rgb/image:={RGB}", "-r", f"thermal/image:={THERMAL}"]
    for ns, sim in (("sim", "true"), ("wall", "false")):
        spawn([sys.executable, "-m", "ivf_perception.nodes.fusion_node", "--ros-args", "-r", f"__ns:=/{ns}",
               "-p", f"use_sim_time:={sim}", *common], f"node-{ns}")
    wait_until(lambda: sim_stats.matched() and wall_stats.matched(), 120, "both nodes' stats")
    player = spawn([sys.executable, "-m", "ivf_perception.cli.main", "play", str(bag), "--rate", "0.5",
                    "--wait-for-subscribers", "120", "--delay", "1"], "player")
    assert player.wait(timeout=180) == 0

    record = sorted(header_stamp_ns(m.msg) for m in read_image_messages(bag))  # record time = stamp here
    got = [_ns(m.clock) for m in clock.wait_for(lambda ms: len(ms) >= len(record), 30, "a clock per message")]
    assert got == record, "/clock carries each message's record time, in order"

    last_rgb = max(header_stamp_ns(m.msg) for m in read_image_messages(bag, [RGB]))
    for stats in (sim_stats, wall_stats):
        stats.wait_for(lambda ms: any(header_stamp_ns(m) == last_rgb for m in ms), 60, "the last frame")
    # sim time: the clock is the bag's, so stamp->published is small (one frame period, plus the
    # processing the sim clock sees) and never the wall-clock gap to the bag's epoch
    sim_ms = [m.end_to_end_ms for m in sim_stats.messages]
    assert all(-100.0 <= v <= 5_000.0 for v in sim_ms), sim_ms
    wall_ms = [m.end_to_end_ms for m in wall_stats.messages]
    assert all(0.0 <= v <= 10_000.0 for v in wall_ms), wall_ms

    def basis(name: str) -> str:
        for array in reversed(diagnostics.messages):
            for status in array.status:
                if f"/{name}/fusion_node" in status.name and diag_values(status).get("latency stamp->published (ms)",
                                                                                     "n/a") != "n/a":
                    return diag_values(status)["latency measured from"]
        return ""

    wait_until(lambda: basis("sim") and basis("wall"), 30, "diagnostics with a latency")
    assert basis("sim") == "header stamp"
    assert basis("wall").startswith("receipt (stamps are ")
    # the sim-time node stamps its diagnostics with the bag's time
    sim_diag = [_ns(a.header.stamp) for a in diagnostics.messages
                if any("/sim/fusion_node" in s.name for s in a.status) and _ns(a.header.stamp) > 0]
    assert sim_diag and all(record[0] <= t <= record[-1] for t in sim_diag)


def test_ctrl_c_ends_a_looping_player_with_exit_0_and_no_traceback(graph, spawn, tmp_path: Path) -> None:
    bag = write_scene_bag(tmp_path / "b", 3, SceneConfig(height=64, width=64, seed=1), fps=30.0, label_topic=None)
    clock = graph.subscribe(Clock, "/clock")
    player = spawn([sys.executable, "-m", "ivf_perception.cli.main", "play", str(bag), "--loop",
                    "--wait-for-subscribers", "60"], "player")
    clock.wait_for(lambda ms: len(ms) >= 8, 120, "more than one pass")
    assert player.stop() == 0
    out = player.output()
    assert "Traceback" not in out and "RCLError" not in out, out
    assert "(stopped)" in out
