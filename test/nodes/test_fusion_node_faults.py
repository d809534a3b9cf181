"""Faults a robot meets: a silent camera, bad frames, stamps jumping back. The node never dies.

The node runs in its own process (default best-effort subscriptions, as against a camera
driver); this process publishes exactly the frames each scenario needs and reads the node's
outputs, FusionStats and /diagnostics. Waits are event-driven (diagnostics every 0.2 s).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_helpers import diag_values, diagnostic_status, image_msg, node_command, params, wait_until
from sensor_msgs.msg import Image

from ivf_perception.io.stats_msg import rclpy_fusion_stats_type

OK, WARN, ERROR = b"\x00", b"\x01", b"\x02"
BASE_NS = 1_700_000_000 * 10**9
MS = 1_000_000


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _fusion(diags: list) -> list:
    return [s for s in (diagnostic_status(d) for d in diags) if s is not None]


def _start(graph, spawn, test_weights, **extra):
    """Node + this process's publishers and subscribers, discovered both ways."""
    outputs = {
        "fused": graph.subscribe(Image, "/fused/image"),
        "stats": graph.subscribe(rclpy_fusion_stats_type(), "/fusion/stats"),
        "diag": graph.subscribe(DiagnosticArray, "/diagnostics"),
    }
    pubs = {"rgb": graph.publisher(Image, "/rgb/image"), "thermal": graph.publisher(Image, "/thermal/image")}
    node = spawn(node_command(*params(weights=str(test_weights), device="cpu", warmup_size=[64, 80],
                                      diagnostics_period_s=0.2, **extra)), "node")
    wait_until(lambda: all(p.get_subscription_count() for p in pubs.values())
               and outputs["fused"].matched() and outputs["stats"].matched(), 120, "the node's topics")
    return node, outputs, pubs


def _frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), rng.integers(0, 256, (64, 80), dtype=np.uint8)


def _send_pair_until_output(pubs, fused, stamp: int, rgb, thermal, timeout: float = 60) -> None:
    """Publish one good pair (again, every 0.5 s, while discovery completes) until it is fused."""
    deadline = time.monotonic() + timeout
    while not any(_stamp(m) == stamp for m in fused.messages):
        if time.monotonic() > deadline:
            raise AssertionError(f"no output for the pair stamped {stamp}")
        pubs["rgb"].publish(image_msg(rgb, "rgb8", stamp, "camera_rgb"))
        pubs["thermal"].publish(image_msg(thermal, "mono8", stamp + 2 * MS, "camera_thermal"))
        with contextlib.suppress(AssertionError):
            fused.wait_for(lambda ms: any(_stamp(m) == stamp for m in ms), 0.5)


def test_silent_thermal_warns_without_outputs_then_recovers_and_time_jump_resets(graph, spawn, test_weights) -> None:
    node, out, pubs = _start(graph, spawn, test_weights, stream_timeout_s=0.5)
    rgb, thermal = _frames()
    _send_pair_until_output(pubs, out["fused"], BASE_NS, rgb, thermal)
    out["diag"].wait_for(lambda ds: any(s.level == OK and "fusing" in s.message for s in _fusion(ds)), 30, "OK")

    # thermal goes silent: RGB keeps coming at 30 Hz, 1 s after the last pair (no partner within slop)
    outputs_before = len(out["fused"].messages)
    warned_at = len(out["diag"].messages)
    stamp = BASE_NS + 1000 * MS
    deadline = time.monotonic() + 60
    while not any(s.level == WARN and "thermal" in s.message for s in _fusion(out["diag"].messages[warned_at:])):
        assert time.monotonic() < deadline, "no WARN while thermal is silent"
        pubs["rgb"].publish(image_msg(rgb, "rgb8", stamp, "camera_rgb"))
        stamp += 33 * MS
        time.sleep(1 / 30)
    warn = next(s for s in _fusion(out["diag"].messages[warned_at:]) if s.level == WARN)
    assert "thermal input /thermal/image: silent for" in warn.message
    assert len(out["fused"].messages) == outputs_before, "outputs without thermal input"
    assert int(diag_values(warn)["rgb received"]) > 1

    # thermal resumes: outputs again and the status returns to OK
    recovered_at = len(out["diag"].messages)
    _send_pair_until_output(pubs, out["fused"], stamp + 500 * MS, rgb, thermal)
    out["diag"].wait_for(lambda ds: any(s.level == OK for s in _fusion(ds[recovered_at:])), 30, "OK again")

    # stamps jump back 1 h (a bag loop): the queues reset and pairing goes on
    old = BASE_NS - 3600 * 10**9
    _send_pair_until_output(pubs, out["fused"], old, rgb, thermal)
    last = out["stats"].wait_for(lambda ms: any(_stamp(m) == old for m in ms), 30, "stats of the old pair")[-1]
    assert last.resets == 1 and node.alive()


def test_bad_frames_are_reported_and_skipped_and_the_next_good_frame_is_published(graph, spawn, test_weights) -> None:
    node, out, pubs = _start(graph, spawn, test_weights)
    rgb, thermal = _frames()
    _send_pair_until_output(pubs, out["fused"], BASE_NS, rgb, thermal)

    def bad(kind: str, stamp: int) -> tuple[Image, Image]:
        good_rgb = image_msg(rgb, "rgb8", stamp, "camera_rgb")
        good_th = image_msg(thermal, "mono8", stamp + 2 * MS, "camera_thermal")
        if kind == "nan_thermal_32FC1":
            th = image_msg(thermal, "mono8", stamp + 2 * MS, "camera_thermal")
            values = np.full((64, 80), np.nan, np.float32)
            th.encoding, th.step, th.data = "32FC1", 80 * 4, values.tobytes()
            return good_rgb, th
        if kind == "truncated_thermal":
            good_th.data = good_th.data[: len(good_th.data) // 2]
            return good_rgb, good_th
        if kind == "zero_size_rgb":
            good_rgb.height = good_rgb.width = good_rgb.step = 0
            good_rgb.data = b""
            return good_rgb, good_th
        if kind == "inconsistent_rgb_step":
            good_rgb.step = 80  # rgb8 needs 240 bytes per row
            return good_rgb, good_th
        if kind == "unsupported_bayer_rgb":
            good_rgb.encoding = "bayer_rggb8"
            return good_rgb, good_th
        raise ValueError(kind)

    expected = {
        "nan_thermal_32FC1": "unsupported image encoding '32FC1'",
        "truncated_thermal": "message is truncated",
        "zero_size_rgb": "image has zero size",
        "inconsistent_rgb_step": "is smaller than one row",
        "unsupported_bayer_rgb": "unsupported image encoding 'bayer_rggb8'",
    }
    good_stamps = [BASE_NS]
    for k, (kind, text) in enumerate(expected.items(), start=1):
        stamp = BASE_NS + k * 1000 * MS
        mark = len(out["diag"].messages)
        r, t = bad(kind, stamp)
        pubs["rgb"].publish(r)
        pubs["thermal"].publish(t)
        errors = out["diag"].wait_for(
            lambda ds, text=text, mark=mark: any(s.level == ERROR and text in s.message for s in _fusion(ds[mark:])),
            30, f"ERROR for {kind}")
        status = next(s for s in _fusion(errors[mark:]) if s.level == ERROR)
        assert diag_values(status)["failed"] == str(k), kind
        assert node.alive(), f"the node died on {kind}"
        good = stamp + 500 * MS
        _send_pair_until_output(pubs, out["fused"], good, rgb, thermal)
        good_stamps.append(good)

    fused_stamps = sorted({_stamp(m) for m in out["fused"].messages})
    assert fused_stamps == good_stamps, "bad frames must not produce outputs"
    mark = len(out["diag"].messages)
    out["diag"].wait_for(lambda ds: any(s.level == OK for s in _fusion(ds[mark:])), 30, "recovery to OK")
    final = out["stats"].messages[-1]
    # (a good pair is re-sent while discovery completes, so count outputs, not stamps)
    assert final.failed == len(expected) and final.processed == len(out["fused"].messages)
