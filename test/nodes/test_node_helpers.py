"""The node's pure helpers: parameter table and validation, engine arguments, QoS, diagnostics rules,
the Fast DDS profile, and the shipped config/launch/RViz files that refer to them."""

from __future__ import annotations

import ast
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from rclpy.qos import ReliabilityPolicy

from ivf_perception.engine.config import PIPELINE_SPECS, ParameterValueError
from ivf_perception.nodes.dds import PROFILE_ENV, apply_large_images_profile, large_images_profile
from ivf_perception.nodes.health import ERROR, OK, WARN, HealthSnapshot, RateMeter, StreamHealth, assess_health
from ivf_perception.nodes.launch_overrides import OVERRIDABLE, user_overrides
from ivf_perception.nodes.parameters import (
    NODE_PARAMETERS,
    PARAMETERS,
    SAFE_PARAMETERS,
    SPECS,
    build_qos,
    check_parameter_change,
    config_from_values,
    descriptor,
    validate_parameter,
)
from ivf_perception.replay.params import NODE_ONLY_PARAMETERS

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = {s.name: s.default for s in PARAMETERS}


class TestParameters:
    def test_defaults_validate_and_build_a_config(self) -> None:
        cfg = config_from_values({})
        assert cfg.pipeline.variant == "auto" and cfg.pipeline.weights == "default"
        assert cfg.qos_reliability == "best_effort"
        assert cfg.pipeline.palette is None and cfg.pipeline.homography is None and cfg.pipeline.agc.low_pct == 1.0

    def test_the_node_declares_the_pipeline_table_plus_its_own(self) -> None:
        assert set(SPECS) == set(PIPELINE_SPECS) | {s.name for s in NODE_PARAMETERS}
        assert not set(PIPELINE_SPECS) & {s.name for s in NODE_PARAMETERS}
        assert set(NODE_ONLY_PARAMETERS) == {s.name for s in NODE_PARAMETERS}, "replay's list of the node's own"

    def test_safe_set_is_the_documented_one(self) -> None:
        assert {"palette", "overlay_alpha", "overlay_enabled", "slop_s", "agc_low_pct", "agc_high_pct",
                "agc_mode", "agc_fixed_low", "agc_fixed_high", "agc_smoothing"} == SAFE_PARAMETERS

    @pytest.mark.parametrize(("name", "value", "message"), [
        ("overlay_alpha", 1.5, "overlay_alpha must be in [0.0, 1.0], got 1.5"),
        ("overlay_alpha", math.nan, "finite double"),
        ("queue_size", 0, "queue_size must be in [1, 100]"),
        ("qos_reliability", "fast", "must be one of best_effort, reliable"),
        ("precision", "int8", "must be one of fp32, fp16, bf16"),
        ("device", "tpu", "device must be auto, cpu, cuda or cuda:N"),
        ("palette", [0x1000000], "palette: palette entry 0 must be an integer 0xRRGGBB"),
        ("palette", [], "one 0xRRGGBB colour per class"),
        ("class_names", ["car", ""], "non-empty list of non-empty names"),
        ("homography", [1.0, 0.0], "homography: homography must have shape (3, 3) or 9 elements"),
        ("homography", [0.0] * 9, "singular"),
        ("warmup_size", [480], "warmup_size must be [height, width]"),
        ("warmup_size", [8, 8], "warmup_size must be in [16, 8192]"),
        ("weights", " ", "weights must not be empty"),
        ("autostart", 1, "autostart must be true or false"),
        ("nonsense", 1, "unknown parameter 'nonsense'"),
    ])
    def test_invalid_values_say_what_is_expected(self, name, value, message) -> None:
        with pytest.raises(ParameterValueError) as info:
            validate_parameter(name, value)
        assert message in str(info.value)

    def test_valid_values_are_normalised(self) -> None:
        assert validate_parameter("homography", (1, 0, 0, 0, 1, 0, 0, 0, 1)) == [1, 0, 0, 0, 1, 0, 0, 0, 1]
        assert validate_parameter("device", "cuda:1") == "cuda:1"
        assert validate_parameter("palette", None) is None

    def test_runtime_changes(self) -> None:
        current = DEFAULTS
        check_parameter_change({"overlay_alpha": 0.2, "slop_s": 0.1}, current, active=True)
        with pytest.raises(ParameterValueError,
                           match="variant cannot change while the node is active; deactivate first"):
            check_parameter_change({"variant": "s4fusion"}, current, active=True)
        check_parameter_change({"variant": "s4fusion"}, current, active=False)
        with pytest.raises(ParameterValueError, match="read-only"):
            check_parameter_change({"autostart": False}, current, active=False)
        with pytest.raises(ParameterValueError, match="0 <= low_pct < high_pct <= 100"):
            check_parameter_change({"agc_low_pct": 99.5}, current, active=True)
        check_parameter_change({"agc_low_pct": 99.5, "agc_high_pct": 99.9}, current, active=True)
        check_parameter_change({"use_sim_time": True}, current, active=True)  # rclpy's own

    def test_qos(self) -> None:
        qos = build_qos("best_effort", 5)
        assert qos.reliability == ReliabilityPolicy.BEST_EFFORT and qos.depth == 5
        assert build_qos("reliable", 1).reliability == ReliabilityPolicy.RELIABLE
        with pytest.raises(ParameterValueError, match="qos_reliability"):
            build_qos("sometimes", 1)

    def test_descriptors_carry_ranges_types_and_read_only(self) -> None:
        d = descriptor(SPECS["overlay_alpha"])
        assert d.floating_point_range[0].from_value == 0.0 and d.floating_point_range[0].to_value == 1.0
        assert descriptor(SPECS["queue_size"]).integer_range[0].to_value == 100
        assert descriptor(SPECS["autostart"]).read_only
        assert "best_effort, reliable" in descriptor(SPECS["qos_reliability"]).description


class TestHealth:
    def _snap(self, **kw) -> HealthSnapshot:
        streams = {"rgb": StreamHealth("/rgb/image", 30, 30.0, 0.03),
                   "thermal": StreamHealth("/thermal/image", 30, 30.0, 0.03)}
        values = dict(state="active", device="cpu", variant="s4fusion", streams=streams,
                      qos_reliability="best_effort", stream_timeout_s=2.0, output_rate_hz=12.5,
                      latency_ms=40.0, processing_ms=30.0, counters={"paired": 30})
        values.update(kw)
        return HealthSnapshot(**values)

    def test_ok_while_fusing(self) -> None:
        r = assess_health(self._snap())
        assert r.level == OK and r.message == "fusing at 12.5 Hz" and r.level_name == "OK"
        values = dict(r.values)
        assert values["rgb rate (Hz)"] == "30.0" and values["paired"] == "30" and values["device"] == "cpu"

    def test_silent_stream_warns_with_hints(self) -> None:
        snap = self._snap()
        snap.streams["thermal"] = StreamHealth("/thermal/image", 0, 0.0, 3.0)
        r = assess_health(snap)
        assert r.level == WARN and "thermal input /thermal/image: no messages yet" in r.message
        assert "QoS matches (subscription: best_effort)" in r.message
        snap.streams["thermal"] = StreamHealth("/thermal/image", 10, 0.0, 2.5)
        assert "silent for 2.5 s" in assess_health(snap).message

    def test_camera_info_mismatch_warns(self) -> None:
        snap = self._snap()
        snap.streams["rgb"].size_mismatch = "camera_info is 1280x720 but images are 640x480"
        assert assess_health(snap).level == WARN

    def test_errors_dominate_and_inactive_is_ok(self) -> None:
        r = assess_health(self._snap(failed_recently=2, last_error="ImageDecodeError: truncated"))
        assert r.level == ERROR and "2 frame(s) failed recently: ImageDecodeError: truncated" in r.message
        assert assess_health(self._snap(state="inactive", streams={})).message == "inactive; no processing"
        r = assess_health(HealthSnapshot(state="unconfigured", configure_error="weights file not found"))
        assert r.level == ERROR and r.message == "not configured: weights file not found"

    def test_rate_meter(self) -> None:
        meter = RateMeter(window_s=2.0)
        assert meter.rate(now=0.0) == 0.0
        for i in range(20):
            meter.tick(now=i * 0.1)
        assert meter.rate(now=1.9) == pytest.approx(20 / 1.9)
        assert meter.rate(now=10.0) == 0.0
        with pytest.raises(ValueError):
            RateMeter(0)


def test_dds_profile_is_valid_and_applied_only_when_unset() -> None:
    path = large_images_profile()
    assert path == REPO / "config" / "fastdds_large_images.xml"
    root = ET.parse(path).getroot()
    ns = {"d": "http://www.eprosima.com"}
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "SHM"]
    assert shm and shm[0].findtext("d:segment_size", namespaces=ns) == "16777216"
    assert root.find(".//d:participant", ns).get("is_default_profile") == "true"
    assert root.findtext(".//d:useBuiltinTransports", namespaces=ns) == "false"
    env: dict[str, str] = {}
    assert apply_large_images_profile(env) == str(path) and env[PROFILE_ENV] == str(path)
    assert apply_large_images_profile({PROFILE_ENV: "/mine.xml"}) == "/mine.xml"


def test_yaml_defaults_match_the_parameter_table() -> None:
    doc = yaml.safe_load((REPO / "config" / "fusion_node.yaml").read_text())
    values = doc["/**"]["ros__parameters"]
    for spec in PARAMETERS:
        if spec.default is None:
            assert spec.name not in values, f"{spec.name} is optional: leave it commented out"
        else:
            assert values[spec.name] == spec.default, spec.name
    config_from_values(values)


def test_launch_overrides_only_the_arguments_the_user_gave() -> None:
    assert user_overrides({"variant": "", "weights": ""}) == {}
    assert user_overrides({"variant": "cmfs", "weights": ""}) == {"variant": "cmfs"}
    assert user_overrides({"weights": " /w/model.safetensors "}) == {"weights": "/w/model.safetensors"}
    assert user_overrides({"variant": "auto", "weights": "none"}) == {"variant": "auto", "weights": "none"}


def test_launch_file_compiles_and_refers_to_existing_things() -> None:
    """Static check only: launch/launch_ros are not installable here (no ros2 launch), and a fake
    launch API would only test our own assumptions. Checked: it compiles, declares the documented
    arguments, starts the installed ``fusion_node`` console script of this package, remaps its
    documented topics, passes only known parameters, and the config/RViz files it names exist
    and are installed by setup.py."""
    source = (REPO / "launch" / "ivf_perception.launch.py").read_text()
    tree = ast.parse(source)
    compile(source, "ivf_perception.launch.py", "exec")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]

    def call_name(c: ast.Call) -> str:
        return getattr(c.func, "id", getattr(c.func, "attr", ""))

    declared = {c.args[0].value for c in calls if call_name(c) == "DeclareLaunchArgument"}
    assert {"variant", "weights", "params_file", "namespace", "rgb_topic", "thermal_topic", "use_rviz"} <= declared
    used = {c.args[0].value for c in calls if call_name(c) in ("arg", "LaunchConfiguration") and c.args
            and isinstance(c.args[0], ast.Constant)}
    assert used <= declared, f"undeclared launch arguments used: {used - declared}"
    node = next(c for c in calls if call_name(c) == "LifecycleNode")
    kw = {k.arg: k.value for k in node.keywords}
    assert kw["executable"].value == "fusion_node" and kw["name"].value == "fusion_node"
    setup = (REPO / "setup.py").read_text()
    assert '"fusion_node = ivf_perception.nodes.fusion_node:main"' in setup
    assert "ivf_perception" in source and 'PACKAGE = "ivf_perception"' in source
    assert set(OVERRIDABLE) <= set(SPECS) and set(OVERRIDABLE) <= declared
    defaults = {c.args[0].value: next(k.value.value for k in c.keywords if k.arg == "default_value")
                for c in calls if call_name(c) == "DeclareLaunchArgument" and c.args[0].value in OVERRIDABLE}
    assert defaults == {name: "" for name in OVERRIDABLE}, "an unset argument must not override the params file"
    assert "user_overrides(" in source
    remapped = {e.elts[0].value for e in kw["remappings"].elts}
    assert remapped == {"rgb/image", "thermal/image", "rgb/camera_info", "thermal/camera_info"}
    joined = [[a.value for a in c.args[0].elts[1:]] for c in calls
              if call_name(c) == "PathJoinSubstitution" and isinstance(c.args[0], ast.List)]
    for parts in joined:
        assert (REPO / Path(*parts)).is_file(), parts
        assert f'glob("{parts[0]}/*' in setup, f"{parts[0]}/ is not installed by setup.py"


def test_rviz_config_shows_the_three_image_outputs() -> None:
    doc = yaml.safe_load((REPO / "rviz" / "ivf_perception.rviz").read_text())
    displays = doc["Visualization Manager"]["Displays"]
    assert {d["Class"] for d in displays} == {"rviz_default_plugins/Image"}
    assert [d["Topic"]["Value"] for d in displays] == ["fused/image", "segmentation/overlay", "segmentation/labels"]


def test_stage_window_keeps_medians_of_the_last_frames() -> None:
    from ivf_perception.nodes.health import StageWindow

    window = StageWindow(size=3)
    for decode, publish in [(100.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]:
        window.record({"decode": decode, "publish": publish})
    window.record({"decode": 2.5})  # a frame that published nothing adds no publish sample
    assert window.medians() == {"decode": 2.5, "publish": 3.0}
    with pytest.raises(ValueError, match="size must be >= 1"):
        StageWindow(0)
