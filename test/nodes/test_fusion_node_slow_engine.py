"""A slow engine drops stale pairs instead of queueing them, and every pair is accounted for.

The node runs in its own process with a test-only registered model whose forward sleeps 0.25 s
(``slow_engine_node.py``: the one stand-in, everything else is production code); this process
publishes a 30 Hz camera pair stream (reliable, so every message arrives and counts are exact).
No wall-clock times are asserted: latency is bounded structurally, by how many outputs still
arrive after the cameras stop (a queue would deliver a backlog of dozens).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rosgraph_helpers import image_msg, node_command, params, wait_until
from sensor_msgs.msg import Image

from ivf_perception.io.stats_msg import rclpy_fusion_stats_type

SLOW_NODE = Path(__file__).with_name("slow_engine_node.py")
FRAMES = 60
PERIOD_S = 1 / 30


def test_slow_engine_drops_stale_pairs_exactly_and_latency_stays_bounded(graph, spawn) -> None:
    stats = graph.subscribe(rclpy_fusion_stats_type(), "/fusion/stats")
    fused = graph.subscribe(Image, "/fused/image")
    rgb_pub, th_pub = graph.publisher(Image, "/rgb/image"), graph.publisher(Image, "/thermal/image")
    node = spawn(node_command(*params(variant="test_slow_s4fusion", weights="none", device="cpu",
                                      warmup_size=[64, 80], qos_reliability="reliable", qos_depth=100),
                              script=SLOW_NODE), "node", IVF_TEST_ENGINE_DELAY_S="0.25")
    wait_until(lambda: rgb_pub.get_subscription_count() and th_pub.get_subscription_count()
               and stats.matched() and fused.matched(), 120, "the node's topics")

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (64, 80), dtype=np.uint8)

    def send() -> int:
        """One camera pair stamped now (like a driver), so end_to_end_ms means something."""
        stamp = time.time_ns()
        rgb_pub.publish(image_msg(rgb, "rgb8", stamp, "camera_rgb"))
        th_pub.publish(image_msg(thermal, "mono8", stamp + 2_000_000, "camera_thermal"))
        return stamp

    # discovery is two-sided: wait until the node has seen this process's publishers
    send()
    stats.wait_for(lambda ms: len(ms) >= 1, 60, "the first output")

    start = time.monotonic()
    for i in range(1, FRAMES + 1):
        time.sleep(max(0.0, start + i * PERIOD_S - time.monotonic()))
        last_stamp = send()
    stopped = time.monotonic()

    final = stats.wait_for(lambda ms: any(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == last_stamp
                                          for m in ms), 60, "the last pair's stats")[-1]
    assert node.alive()
    assert final.received_rgb == final.received_thermal == FRAMES + 1
    assert final.paired == FRAMES + 1 and final.failed == 0
    # exact accounting: every pair was either processed or replaced while the worker was busy
    assert final.paired == final.processed + final.dropped_stale
    assert final.dropped_stale > FRAMES // 2, "a 0.25 s engine at 30 Hz must drop most pairs"
    fused.wait_for(lambda ms: len(ms) == final.processed, 30, "one fused image per processed pair")
    # bounded latency: once the cameras stop, only the pair in progress and the one in the slot remain
    late = [item for item in stats.items if item.at > stopped]
    assert len(late) <= 3, f"{len(late)} outputs arrived after the input stopped: a backlog was queued"
    print(f"processed {final.processed}/{final.paired}, dropped {final.dropped_stale}, "
          f"last end-to-end {final.end_to_end_ms:.0f} ms (informative, not asserted)")
