"""Lifecycle transitions and parameters through the node's ROS services, from another process.

``autostart: false``: the node waits; ``change_state``/``get_state`` drive it as a lifecycle
manager (or ``ros2 lifecycle set``) would, ``set_parameters`` changes parameters as
``ros2 param set`` would. Missing weights make configure fail with the reason in /diagnostics;
safe parameters change while active and take effect on the next frame; others are refused.
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rosgraph_helpers import diagnostic_status, image_msg, node_command, params, wait_until
from sensor_msgs.msg import Image

from ivf_perception.io import colorize_labels, image_to_numpy

NODE = "/fusion_node"
BASE_NS = 1_700_000_000 * 10**9


def _state(graph) -> int:
    return graph.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.id


def _transition(graph, transition_id: int) -> bool:
    return graph.call(ChangeState, f"{NODE}/change_state",
                      ChangeState.Request(transition=Transition(id=transition_id))).success


def _set(graph, **values) -> list:
    msgs: list[ParameterMsg] = [Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    return graph.call(SetParameters, f"{NODE}/set_parameters", SetParameters.Request(parameters=msgs)).results


def test_lifecycle_services_and_runtime_parameters(graph, spawn, test_weights, tmp_path) -> None:
    diag = graph.subscribe(DiagnosticArray, "/diagnostics")
    overlay = graph.subscribe(Image, "/segmentation/overlay")
    labels = graph.subscribe(Image, "/segmentation/labels")
    node = spawn(node_command(*params(autostart=False, weights=str(tmp_path / "missing.safetensors"), device="cpu",
                                      warmup_size=[64, 80], diagnostics_period_s=0.2)), "node")
    assert _state(graph) == State.PRIMARY_STATE_UNCONFIGURED

    # configure fails on missing weights: FAILURE, still unconfigured, reason in the diagnostics
    assert not _transition(graph, Transition.TRANSITION_CONFIGURE)
    assert _state(graph) == State.PRIMARY_STATE_UNCONFIGURED
    diag.wait_for(lambda ds: any((s := diagnostic_status(d)) and s.level == b"\x02" and "weights file not found"
                                 in s.message for d in ds), 30, "the configure error")

    # fix the parameter (allowed while not active), configure, activate
    assert all(r.successful for r in _set(graph, weights=str(test_weights)))
    assert _transition(graph, Transition.TRANSITION_CONFIGURE)
    assert _state(graph) == State.PRIMARY_STATE_INACTIVE
    assert _transition(graph, Transition.TRANSITION_ACTIVATE)
    assert _state(graph) == State.PRIMARY_STATE_ACTIVE

    # while active: engine/QoS parameters are refused with the reason, safe ones are validated
    refused = _set(graph, variant="s4fusion")[0]
    assert not refused.successful and "deactivate first" in refused.reason
    for bad in ({"overlay_alpha": 1.5}, {"palette": [0x1000000]}, {"agc_low_pct": 99.5}, {"autostart": True}):
        assert not _set(graph, **bad)[0].successful, bad
    assert "read-only" in _set(graph, autostart=True)[0].reason
    assert "0xRRGGBB" in _set(graph, palette=[0x1000000])[0].reason
    assert all(r.successful for r in _set(graph, overlay_alpha=1.0, palette=[0xFF0000] * 9, slop_s=0.1))

    # the runtime change takes effect: alpha 1 with an all-red palette gives a red overlay
    rgb_pub, th_pub = graph.publisher(Image, "/rgb/image"), graph.publisher(Image, "/thermal/image")
    wait_until(lambda: rgb_pub.get_subscription_count() and th_pub.get_subscription_count()
               and overlay.matched(), 60, "the active node's topics")
    rng = np.random.default_rng(0)
    rgb, thermal = rng.integers(0, 256, (64, 80, 3), np.uint8), rng.integers(0, 256, (64, 80), np.uint8)
    deadline = time.monotonic() + 60
    while not overlay.messages:
        assert time.monotonic() < deadline, "no overlay from the active node"
        rgb_pub.publish(image_msg(rgb, "rgb8", BASE_NS, "camera_rgb"))
        th_pub.publish(image_msg(thermal, "mono8", BASE_NS, "camera_thermal"))
        time.sleep(0.5)
    labels.wait_for(lambda ms: len(ms) >= 1, 30, "labels")
    red = image_to_numpy(overlay.messages[0])
    np.testing.assert_array_equal(red, colorize_labels(image_to_numpy(labels.messages[0]), [0xFF0000] * 9))

    # deactivate: no processing, and engine parameters may change again (for the next configure)
    assert _transition(graph, Transition.TRANSITION_DEACTIVATE)
    assert _state(graph) == State.PRIMARY_STATE_INACTIVE
    wait_until(lambda: rgb_pub.get_subscription_count() == 0, 30, "the subscriptions to go away")
    assert _set(graph, variant="auto")[0].successful
    assert _transition(graph, Transition.TRANSITION_CLEANUP)
    assert _state(graph) == State.PRIMARY_STATE_UNCONFIGURED
    assert _transition(graph, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert node.wait(timeout=30) == 0, "the node exits after the shutdown transition"
