"""QoS the ROS way (issue 14 part 3): REP-2003 overrides on every subscription and publisher,
incompatible-QoS events logged once and shown in /diagnostics, clear errors for bad overrides.

Real rclpy throughout: the pure rules without a graph, the node in this process (own context) to
read its entities' actual QoS, and the node as its own process (started with a parameter file,
as on a robot) against a best-effort camera publisher in this process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_helpers import diagnostic_status, image_msg, params, wait_until
from sensor_msgs.msg import Image
from test_fusion_node_inprocess import FAILURE, SUCCESS

from ivf_perception.nodes.health import OK, WARN, HealthSnapshot, assess_health
from ivf_perception.nodes.qos import (
    QosOverrideError,
    check_override,
    describe_profile,
    incompatibility,
    override_name,
    policy_name_of_event,
)

RGB_SUB = "qos_overrides./rgb/image.subscription"
MS = 1_000_000
BASE_NS = 1_700_000_000 * 1_000_000_000


# ---------------------------------------------------------------- rules (no graph)

def test_override_names_values_and_errors() -> None:
    assert override_name("/rgb/image", "subscription", "reliability") == f"{RGB_SUB}.reliability"
    for name, value in ((f"{RGB_SUB}.reliability", "reliable"), (f"{RGB_SUB}.history", "KEEP_ALL"),
                        ("qos_overrides./fused/image.publisher.durability", "transient_local"),
                        (f"{RGB_SUB}.depth", 1)):
        check_override(name, value)
    for name, value, message in (
            (f"{RGB_SUB}.reliability", "fast", "must be one of reliable, best_effort, system_default, got 'fast'"),
            (f"{RGB_SUB}.depth", 0, "must be an integer in [1, 1000], got 0"),
            (f"{RGB_SUB}.depth", "5", "must be an integer"),
            (f"{RGB_SUB}.deadline", 10, "policy 'deadline' cannot be overridden here; overridable: history, depth"),
            ("qos_overrides./rgb/image.reliability", "reliable", "expected qos_overrides.<topic>.<publisher|sub")):
        with pytest.raises(QosOverrideError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_override(name, value)


def test_incompatibilities_are_described_from_both_sides() -> None:
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    assert incompatibility("/rgb/image", "subscription", reliable, [reliable, best_effort]) == \
        "/rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"
    assert incompatibility("/rgb/image", "subscription", best_effort, [reliable, best_effort]) is None
    assert incompatibility("/fused/image", "publisher", best_effort, [reliable]) == \
        "/fused/image: subscriber requests RELIABLE, we offer BEST_EFFORT"
    assert incompatibility("/x", "publisher", reliable, [latched]) == \
        "/x: subscriber requests TRANSIENT_LOCAL, we offer VOLATILE"
    assert describe_profile(best_effort) == "best_effort, keep_last 5, volatile"
    kind = SimpleNamespace(name="RMW_QOS_POLICY_RELIABILITY")  # what rclpy's event status carries
    assert policy_name_of_event(SimpleNamespace(last_policy_kind=kind)) == "RELIABILITY"
    report = assess_health(HealthSnapshot(state="inactive", qos_problems=[
        "/rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"]))
    assert report.level == WARN
    assert report.message == "QoS mismatch: /rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"
    assert assess_health(HealthSnapshot(state="inactive")).level == OK


def test_the_example_in_the_shipped_params_file_is_valid(tmp_path: Path) -> None:
    """config/fusion_node.yaml's commented qos_overrides block, uncommented, is what rcl parses."""
    from rclpy.parameter import parameter_dict_from_yaml_file, parameter_value_to_python

    lines = (Path(__file__).resolve().parents[2] / "config" / "fusion_node.yaml").read_text().splitlines()
    start = lines.index("    # qos_overrides:")
    block = []
    for line in lines[start:]:
        if not line.startswith("    # ") or (block and not line.startswith("    #   ")):
            break
        block.append("    " + line[6:].split("#")[0].rstrip())
    example = tmp_path / "qos.yaml"
    example.write_text("/**:\n  ros__parameters:\n" + "\n".join(block) + "\n")
    parsed = parameter_dict_from_yaml_file(str(example), use_wildcard=True)
    values = {name: parameter_value_to_python(p.value) for name, p in parsed.items()}
    assert values == {f"{RGB_SUB}.reliability": "reliable", f"{RGB_SUB}.depth": 10,
                      "qos_overrides./fused/image.publisher.reliability": "best_effort",
                      "qos_overrides./fused/image.publisher.history": "keep_last",
                      "qos_overrides./fused/image.publisher.durability": "volatile"}
    for name, value in values.items():
        check_override(name, value)


# ---------------------------------------------------------------- the node in this process

def test_overrides_set_the_actual_qos_of_subscriptions_and_publishers(make_node) -> None:  # noqa: F811
    node = make_node(**{f"{RGB_SUB}.reliability": "reliable", f"{RGB_SUB}.depth": 7,
                        "qos_overrides./fused/image.publisher.reliability": "best_effort",
                        "qos_overrides./fused/image.publisher.history": "keep_all"})
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    subs = {s.topic_name: s.qos_profile for s in node._subscriptions_list}
    assert (subs["/rgb/image"].reliability, subs["/rgb/image"].depth) == (ReliabilityPolicy.RELIABLE, 7)
    assert (subs["/thermal/image"].reliability, subs["/thermal/image"].depth) == (ReliabilityPolicy.BEST_EFFORT, 5)
    fused = node._publishers_by_name["fused"].qos_profile
    assert (fused.reliability, fused.history) == (ReliabilityPolicy.BEST_EFFORT, HistoryPolicy.KEEP_ALL)
    assert node._publishers_by_name["labels"].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    class_info = node._publishers_by_name["class_info"].qos_profile
    assert class_info.durability == DurabilityPolicy.TRANSIENT_LOCAL  # the latched default is kept
    # every entity has its overridable policies as parameters (what `ros2 param list` shows)
    names = {n for n in node._parameters if n.startswith("qos_overrides.")}
    for topic, entity in (("/rgb/camera_info", "subscription"), ("/segmentation/overlay", "publisher"),
                          ("/fusion/stats", "publisher"), ("/diagnostics", "publisher")):
        assert {f"qos_overrides.{topic}.{entity}.{p}" for p in ("history", "depth", "reliability", "durability")} \
            <= names
    # the graph (what other processes see) shows the overridden reliability
    graph_view = rclpy.create_node("observer", context=node.context)
    try:
        wait_until(lambda: graph_view.get_subscriptions_info_by_topic("/rgb/image"), 20, "the graph")
        (info,) = graph_view.get_subscriptions_info_by_topic("/rgb/image")
        assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    finally:
        graph_view.destroy_node()
    # overrides are startup-only; the node-wide defaults still apply to a new configure
    refused = node.set_parameters([Parameter(f"{RGB_SUB}.reliability", value="best_effort")])[0]
    assert not refused.successful and "give them at startup" in refused.reason
    assert node.trigger_deactivate() == SUCCESS and node.trigger_cleanup() == SUCCESS
    assert node.set_parameters([Parameter("qos_reliability", value="reliable")])[0].successful
    assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
    subs = {s.topic_name: s.qos_profile for s in node._subscriptions_list}
    assert subs["/thermal/image"].reliability == ReliabilityPolicy.RELIABLE
    assert subs["/rgb/image"].depth == 7, "the startup override still wins for its topic"


@pytest.mark.parametrize(("override", "value", "reason"), [
    (f"{RGB_SUB}.reliability", "fast", f"invalid QoS override: {RGB_SUB}.reliability must be one of reliable, "
     "best_effort, system_default, got 'fast'; fix it and restart the node"),
    (f"{RGB_SUB}.depth", "deep", f"{RGB_SUB}.depth must be an integer; the value given has another type"),
    ("qos_overrides./segmentation/labels.publisher.durability", "forever", "transient_local"),
])
def test_a_bad_override_fails_configure_with_the_parameter_named(make_node, override, value, reason) -> None:  # noqa: F811
    node = make_node(**{override: value})
    assert node.trigger_configure() == FAILURE
    assert reason in node._configure_error and "restart the node" in node._configure_error
    assert node._engine is None and not node._publishers_by_name
    assert not any(n.startswith(override.rsplit(".", 1)[0]) for n in node._parameters)


def test_a_bad_override_of_the_diagnostics_publisher_exits_2(domain_id, monkeypatch, capsys) -> None:
    from ivf_perception.nodes.fusion_node import main

    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))
    argv = ["fusion_node", "--ros-args", "-p", "autostart:=false",
            "-p", "qos_overrides./diagnostics.publisher.reliability:=sometimes"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "qos_overrides./diagnostics.publisher.reliability must be one of reliable" in err


# ---------------------------------------------------------------- node process vs a camera in this process

PARAMS_YAML = """\
/**:
  ros__parameters:
    qos_reliability: best_effort
    qos_overrides:
      /rgb/image:
        subscription:
          reliability: reliable
          depth: 10
"""


def test_best_effort_camera_against_a_reliable_override_is_diagnosed_and_the_node_keeps_serving(
        graph, spawn, test_weights, tmp_path: Path) -> None:
    params_file = tmp_path / "qos.yaml"
    params_file.write_text(PARAMS_YAML)
    fused = graph.subscribe(Image, "/fused/image")
    diag = graph.subscribe(DiagnosticArray, "/diagnostics", depth=500)
    best_effort = graph.node.create_publisher(Image, "/rgb/image",
                                              QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    node = spawn([sys.executable, "-m", "ivf_perception.nodes.fusion_node", "--ros-args", "--params-file",
                  str(params_file), *params(weights=str(test_weights), device="cpu", warmup_size=[64, 80],
                                            diagnostics_period_s=0.2)], "node")
    expected = "/rgb/image: publisher offers BEST_EFFORT, we request RELIABLE"

    def fusion_statuses() -> list:
        return [s for s in (diagnostic_status(d) for d in diag.messages) if s is not None]

    wait_until(lambda: any(expected in s.message for s in fusion_statuses()), 120, "the QoS diagnostic")
    status = next(s for s in fusion_statuses() if expected in s.message)
    assert status.level == bytes([WARN]) and f"QoS mismatch: {expected}" in status.message
    values = {kv.key: kv.value for kv in status.values}
    assert values["rgb QoS"] == "reliable, keep_last 10, volatile"
    assert values["thermal QoS"] == "best_effort, keep_last 5, volatile"
    # the override is what other processes see in the graph
    (info,) = [i for i in graph.node.get_subscriptions_info_by_topic("/rgb/image") if i.node_name == "fusion_node"]
    assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE

    # a matching (reliable) camera: the node serves frames while the mismatched one still exists
    pubs = {"rgb": graph.publisher(Image, "/rgb/image"), "thermal": graph.publisher(Image, "/thermal/image")}
    wait_until(lambda: all(p.get_subscription_count() for p in pubs.values()) and fused.matched(), 60, "matching")
    rng = np.random.default_rng(0)
    rgb, thermal = rng.integers(0, 256, (64, 80, 3), np.uint8), rng.integers(0, 256, (64, 80), np.uint8)
    deadline = time.monotonic() + 60
    while not fused.messages:
        assert time.monotonic() < deadline, "no fused output from the reliable camera"
        pubs["rgb"].publish(image_msg(rgb, "rgb8", BASE_NS, "camera_rgb"))
        pubs["thermal"].publish(image_msg(thermal, "mono8", BASE_NS + 2 * MS, "camera_thermal"))
        time.sleep(0.5)
    # the mismatched publisher goes away: the diagnostic clears by itself
    graph.node.destroy_publisher(best_effort)
    seen = len(diag.messages)
    diag.wait_for(lambda ds: any(s is not None and "QoS mismatch" not in s.message
                                 for s in (diagnostic_status(d) for d in ds[seen:])), 60, "the cleared diagnostic")
    assert node.alive()
    log = node.output()
    assert log.count(f"QoS mismatch, no messages will flow: {expected}") == 1, "logged once per topic"
