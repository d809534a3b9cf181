"""Topic detection and node parameters, without bags (a stub reader) or with tiny files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ivf_perception.engine import Engine
from ivf_perception.engine.config import PipelineConfig
from ivf_perception.io.bag import BagMessage
from ivf_perception.io.bag_topics import MissingTopicError, UnsupportedTopicError, select_topics
from ivf_perception.replay.params import load_node_params

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


class StubReader:
    """What select_topics uses of a BagReader: topics, counts, first messages, a description."""

    def __init__(self, topics: dict[str, tuple[str, str]]) -> None:
        self.path = Path("stub")
        self.topics = {t: m for t, (m, _) in topics.items()}
        self.counts = {t: 3 for t in topics}
        self._enc = {t: e for t, (_, e) in topics.items()}

    def messages(self, topics):
        for t in topics:  # a CompressedImage has a format, not an encoding
            fields = {"format": self._enc[t]} if self.topics[t] == COMPRESSED else {"encoding": self._enc[t]}
            yield BagMessage(t, 0, SimpleNamespace(**fields))

    def describe_topics(self) -> str:
        return ", ".join(f"{t} [{m}]" for t, m in sorted(self.topics.items()))


def test_detects_by_name():
    reader = StubReader({"/camera/color/image_raw": (IMAGE, "bgr8"), "/flir_boson/image_raw": (IMAGE, "mono16"),
                         "/camera/color/labels": (IMAGE, "mono8"), "/ivf/fused/image": (IMAGE, "rgb8"),
                         "/imu": ("sensor_msgs/msg/Imu", "")})
    sel = select_topics(reader)
    assert sel.rgb == "/camera/color/image_raw" and sel.thermal == "/flir_boson/image_raw"
    assert sel.label == "/camera/color/labels"
    assert sel.how == {"thermal": "name", "rgb": "name", "label": "name"}


def test_detects_by_encoding_and_by_elimination():
    sel = select_topics(StubReader({"/cam0/image": (IMAGE, "rgb8"), "/cam1/image": (IMAGE, "16UC1")}))
    assert (sel.rgb, sel.thermal) == ("/cam0/image", "/cam1/image")
    assert sel.how["rgb"] == sel.how["thermal"] == "encoding"
    sel = select_topics(StubReader({"/front/rgb": (IMAGE, "rgb8"), "/front/other": (IMAGE, "mono8")}))
    assert sel.thermal == "/front/other" and sel.how["thermal"] == "the only other image topic"
    assert sel.label is None


def test_ambiguous_or_unsupported_topics_are_explained():
    reader = StubReader({"/left/rgb": (IMAGE, "rgb8"), "/right/rgb": (IMAGE, "rgb8"), "/thermal": (IMAGE, "mono8")})
    with pytest.raises(MissingTopicError, match="several topics look like the rgb camera.*--rgb-topic"):
        select_topics(reader)
    assert select_topics(reader, rgb="/left/rgb").rgb == "/left/rgb"
    reader = StubReader({"/front/image": ("sensor_msgs/msg/Imu", ""), "/thermal": (IMAGE, "mono8")})
    with pytest.raises(UnsupportedTopicError, match="carries sensor_msgs/msg/Imu, but replay reads "
                       "sensor_msgs/msg/Image and sensor_msgs/msg/CompressedImage only"):
        select_topics(reader, rgb="/front/image")


def test_compressed_topics_are_cameras_and_raw_twins_win():
    """image_transport topics are detected like raw ones (their format names the encoding); a
    camera recorded both ways is read from its lossless raw topic."""
    sel = select_topics(StubReader({"/cam0/image/compressed": (COMPRESSED, "bgr8; jpeg compressed bgr8"),
                                    "/cam1/image/compressed": (COMPRESSED, "mono16; png compressed mono16")}))
    assert (sel.rgb, sel.thermal) == ("/cam0/image/compressed", "/cam1/image/compressed")
    assert sel.how["rgb"] == sel.how["thermal"] == "encoding"
    sel = select_topics(StubReader({"/cam0/image": (COMPRESSED, "jpeg"), "/cam1/depth/compressedDepth":
                                    (COMPRESSED, "16UC1; compressedDepth png")}))
    assert (sel.rgb, sel.thermal) == ("/cam0/image", "/cam1/depth/compressedDepth")
    assert sel.how["rgb"] == "the only other image topic"
    sel = select_topics(StubReader({
        "/camera/color/image_raw": (IMAGE, "bgr8"), "/camera/color/image_raw/compressed": (COMPRESSED, "jpeg"),
        "/lwir/image_raw": (IMAGE, "mono16"), "/lwir/image_raw/compressedDepth": (COMPRESSED, "16UC1; compressedDepth"),
        "/camera/color/labels/compressed": (COMPRESSED, "mono8; png compressed mono8")}))
    assert (sel.rgb, sel.thermal, sel.label) == ("/camera/color/image_raw", "/lwir/image_raw",
                                                 "/camera/color/labels/compressed")
    given = StubReader({"/rgb/image_raw": (IMAGE, "rgb8"), "/rgb/image_raw/compressed": (COMPRESSED, "jpeg"),
                        "/thermal": (IMAGE, "mono8")})
    assert select_topics(given, rgb="/rgb/image_raw/compressed").rgb == "/rgb/image_raw/compressed"


def test_node_params_file_layouts_and_validation(tmp_path):
    defaults = load_node_params(None)
    assert (defaults.slop_s, defaults.queue_size, defaults.time_jump_ns) == (0.05, 10, 1_000_000_000)
    f = tmp_path / "p.yaml"
    f.write_text("fusion_node:\n  ros__parameters:\n    slop_s: 0.02\n    queue_size: 3\n    typo_param: 1\n"
                 "other_node:\n  ros__parameters:\n    slop_s: 0.5\n")
    params = load_node_params(f)
    assert (params.slop_s, params.queue_size) == (0.02, 3) and "fusion_node" in params.source
    assert params.as_dict()["unknown_parameters"] == ["typo_param"]
    assert load_node_params(f, "other_node").slop_s == 0.5
    assert load_node_params(f, slop_s=0.01).slop_s == 0.01
    with pytest.raises(ValueError, match="node 'nope' is not in"):
        load_node_params(f, "nope")
    f.write_text("/**:\n  ros__parameters:\n    queue_size: 0\n")
    with pytest.raises(ValueError, match="queue_size"):
        load_node_params(f)
    f.write_text("just: text\n")
    with pytest.raises(ValueError, match="not a ROS 2 parameter file"):
        load_node_params(f)
    with pytest.raises(FileNotFoundError):
        load_node_params(tmp_path / "missing.yaml")


def test_node_params_apply_to_the_engine(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    homography: [1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]\n"
                 "    agc_low_pct: 2.0\n    agc_high_pct: 98.0\n    time_jump_threshold_s: 0.5\n")
    params = load_node_params(f)
    engine = Engine.from_config(PipelineConfig.from_values(
        {**params.applied, "variant": "test_s4fusion", "weights": "none", "device": "cpu"}))
    assert engine.homography[0, 2] == 2.0 and (engine.agc.low_pct, engine.agc.high_pct) == (2.0, 98.0)
    assert params.time_jump_ns == 500_000_000
    np.testing.assert_array_equal(engine.homography[2], [0.0, 0.0, 1.0])
