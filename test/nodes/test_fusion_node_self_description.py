"""Outputs that describe themselves (issue 14 part 4): ``fused/camera_info`` and the latched
``segmentation/class_info``, received by a real subscriber node (same process, own context)."""

from __future__ import annotations

import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, RegionOfInterest
from test_fusion_node_inprocess import SUCCESS, _pair

from ivf_perception.io import make_header
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE, palette_to_array
from ivf_perception.nodes.self_description import IGNORE_ID, fused_camera_info


def _info(width: int, height: int) -> CameraInfo:
    return CameraInfo(header=make_header(5, "rgb_optical"), width=width, height=height, distortion_model="plumb_bob",
                      d=[0.1, -0.2, 0.0, 0.0, 0.01], k=[400.0, 0, 320.0, 0, 410.0, 240.0, 0, 0, 1],
                      r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1], p=[400.0, 0, 320.0, 4.0, 0, 410.0, 240.0, 0, 0, 0, 1, 0],
                      roi=RegionOfInterest(x_offset=64, y_offset=48, width=320, height=240))


def test_fused_camera_info_scales_intrinsics_and_takes_the_output_header() -> None:
    header = make_header(123_000, "camera_rgb_optical_frame")
    same = fused_camera_info(_info(640, 480), header, 640, 480)
    assert same.header == header and list(same.k) == list(_info(640, 480).k) and list(same.p) == list(_info(640, 480).p)
    half = fused_camera_info(_info(640, 480), header, 320, 240)
    assert (half.width, half.height) == (320, 240)
    np.testing.assert_allclose(half.k, [200, 0, 160, 0, 205, 120, 0, 0, 1])
    np.testing.assert_allclose(half.p, [200, 0, 160, 2, 0, 205, 120, 0, 0, 0, 1, 0])
    assert list(half.d) == list(_info(640, 480).d) and half.distortion_model == "plumb_bob"
    assert (half.roi.x_offset, half.roi.y_offset, half.roi.width, half.roi.height) == (32, 24, 160, 120)
    unsized = fused_camera_info(_info(0, 0), header, 80, 64)
    assert list(unsized.k) == list(_info(0, 0).k)


def test_node_publishes_scaled_camera_info_and_a_latched_class_table(make_node) -> None:  # noqa: F811
    node = make_node()
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    # a subscriber that joins after activation still receives the class table (transient local)
    listener = rclpy.create_node("class_info_listener", context=node.context)
    got: list = []
    listener.create_subscription(node._class_info_type, "segmentation/class_info", got.append,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                            durability=DurabilityPolicy.TRANSIENT_LOCAL))
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(listener)
    deadline = time.monotonic() + 20.0
    while not got and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    executor.shutdown()
    listener.destroy_node()
    assert got, "no latched class_info for a late subscriber"
    assert list(got[0].names) == list(MFNET_CLASSES)
    assert bytes(got[0].palette) == palette_to_array(MFNET_PALETTE).tobytes()
    assert got[0].ignore_id == IGNORE_ID

    listener = rclpy.create_node("camera_info_listener", context=node.context)
    listener.create_subscription(CameraInfo, "fused/camera_info", lambda msg: None, 10)
    deadline = time.monotonic() + 10.0
    while node._publishers_by_name["camera_info"].get_subscription_count() == 0:
        assert time.monotonic() < deadline, "no match on fused/camera_info"
        time.sleep(0.01)
    published: list = []
    real = node._publishers_by_name["camera_info"].publish
    node._publishers_by_name["camera_info"].publish = lambda m: (published.append(m), real(m))
    node._on_camera_info("rgb", _info(160, 128))  # calibration at twice the 80x64 output size
    pair = _pair(stamp=7_000)
    node._process(pair)
    listener.destroy_node()
    assert len(published) == 1
    assert published[0].header == pair.rgb.header and (published[0].width, published[0].height) == (80, 64)
    np.testing.assert_allclose(published[0].k, [200, 0, 160, 0, 205, 120, 0, 0, 1])
