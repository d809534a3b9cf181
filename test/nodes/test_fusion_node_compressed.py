"""Compressed inputs on the node (issue 14 part 2): per-stream ``*_transport: compressed`` subscribes
``<stream>/image/compressed``; JPEG RGB + 16-bit PNG thermal are fused, and a corrupt frame is a
counted, skipped frame. Real rclpy publishers and the node in one process (own context)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage
from test_fusion_node_inprocess import SUCCESS

from ivf_perception.io import make_header
from ivf_perception.sync import Pair


def _msg(array: np.ndarray, ext: str, fmt: str, stamp: int) -> CompressedImage:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return CompressedImage(header=make_header(stamp, "cam"), format=fmt, data=buf.tobytes())


def test_compressed_transports_subscribe_decode_and_count_corrupt_frames(make_node) -> None:  # noqa: F811
    node = make_node(rgb_transport="compressed", thermal_transport="compressed", qos_reliability="reliable")
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    topics = {sub.topic_name: sub.msg_type for sub in node._subscriptions_list[:2]}
    assert topics == {"/rgb/image/compressed": CompressedImage, "/thermal/image/compressed": CompressedImage}

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), np.uint8)
    counts = rng.integers(20_000, 30_000, (64, 80), np.uint16)
    publisher = rclpy.create_node("camera", context=node.context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {s: publisher.create_publisher(CompressedImage, f"{s}/image/compressed", qos) for s in ("rgb", "thermal")}
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 20.0
        while any(p.get_subscription_count() == 0 for p in pubs.values()):
            assert time.monotonic() < deadline, "the node's compressed subscriptions did not match"
            executor.spin_once(timeout_sec=0.05)
        pubs["rgb"].publish(_msg(rgb, ".jpg", "rgb8; jpeg compressed bgr8", 1_000_000))
        pubs["thermal"].publish(_msg(counts, ".png", "mono16; png compressed mono16", 1_000_000))
        while node._processed < 1:
            assert time.monotonic() < deadline + 40.0 and node._failed == 0, node._last_error
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        publisher.destroy_node()
    assert node._pairer.stats.received == {"rgb": 1, "thermal": 1}

    bad = CompressedImage(header=make_header(2_000_000, "cam"), format="mono16; png compressed mono16",
                          data=_msg(counts, ".png", "", 0).data[:40])  # truncated PNG
    good_rgb = _msg(rgb, ".jpg", "rgb8; jpeg compressed bgr8", 2_000_000)
    node._process(Pair(2_000_000, 2_000_000, good_rgb, bad))
    assert node._failed == 1 and "corrupt or truncated" in node._last_error and node._processed == 1
