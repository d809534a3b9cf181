"""FusionStats: one .msg definition for rosbags (replay) and the built ROS interface package (node)."""

from __future__ import annotations

import numpy as np
import pytest

from ivf_perception.io.bag import get_typestore
from ivf_perception.io.stats_msg import (
    FUSION_STATS_MSGTYPE,
    FusionStatsValues,
    fusion_stats_definition,
    fusion_stats_definition_path,
    rclpy_fusion_stats_type,
    register_fusion_stats,
)
from ivf_perception.sync import Pair, PairingStats


def _values() -> FusionStatsValues:
    stats = PairingStats()
    stats.received.update(rgb=5, thermal=4)
    stats.paired, stats.dropped_stale, stats.skew_abs_sum_ns, stats.skew_abs_max_ns = 4, 1, 8_000_000, 3_000_000
    pair = Pair(1_700_000_000_500_000_000, 1_700_000_000_502_000_000, None, None)
    labels = np.array([[0, 1], [1, 8]], np.uint8)
    return FusionStatsValues.from_frame(
        rgb_stamp_ns=pair.rgb_stamp_ns, thermal_stamp_ns=pair.thermal_stamp_ns, frame_id="cam",
        engine_info={"variant": "s4fusion", "preset": "tiny", "device": "cpu", "precision": "fp32"},
        class_names=[f"c{i}" for i in range(9)], labels=labels,
        timings_ms={"preprocess": 1.0, "inference": 20.0, "postprocess": 2.0}, pairing=stats,
        end_to_end_ms=30.0, processed=3, failed=0, resets=1)


def test_values_from_a_frame() -> None:
    v = _values()
    assert v.class_pixel_counts == [1, 2, 0, 0, 0, 0, 0, 0, 1]
    assert v.pair_skew_ms == pytest.approx(2.0) and v.pair_skew_mean_ms == pytest.approx(2.0)
    assert v.received_rgb == 5 and v.dropped_stale == 1 and v.resets == 1


def test_rosbags_registration_round_trips_and_matches_the_rclpy_package() -> None:
    assert fusion_stats_definition_path().name == "FusionStats.msg"
    typestore = get_typestore()
    cls = register_fusion_stats(typestore)
    assert register_fusion_stats(typestore) is cls  # idempotent
    v = _values()
    raw = typestore.serialize_cdr(v.to_rosbags(typestore), FUSION_STATS_MSGTYPE)
    back = typestore.deserialize_cdr(raw, FUSION_STATS_MSGTYPE)
    assert back.header.stamp.sec == 1_700_000_000 and back.header.stamp.nanosec == 500_000_000
    assert back.thermal_stamp.nanosec == 502_000_000 and back.class_pixel_counts.tolist() == v.class_pixel_counts

    # the interface package built from the same file (make venv / colcon) reads the same bytes
    from rclpy.serialization import deserialize_message, serialize_message

    msg_type = rclpy_fusion_stats_type()
    rclpy_msg = deserialize_message(bytes(raw), msg_type)
    assert rclpy_msg.variant == "s4fusion" and rclpy_msg.resets == 1 and list(rclpy_msg.class_names) == v.class_names
    again = typestore.deserialize_cdr(bytes(serialize_message(v.to_rclpy())), FUSION_STATS_MSGTYPE)
    for name in ("variant", "preset", "device", "precision", "processed", "failed", "resets", "paired", "class_names"):
        assert getattr(again, name) == getattr(back, name), name
    assert again.end_to_end_ms == back.end_to_end_ms and again.thermal_stamp == back.thermal_stamp
    assert again.class_pixel_counts.tolist() == v.class_pixel_counts
    fields = [line.split()[1] for line in fusion_stats_definition().splitlines()
              if line.strip() and not line.startswith("#")]
    assert list(msg_type.get_fields_and_field_types()) == fields


@pytest.mark.parametrize("shape", [(480, 640), (3, 5), (1, 1)])
def test_class_pixel_counts_equal_bincount(shape) -> None:
    from ivf_perception.io.stats_msg import class_pixel_counts

    rng = np.random.default_rng(shape[0])
    labels = rng.integers(0, 9, shape, dtype=np.uint8)
    assert class_pixel_counts(labels, 9) == np.bincount(labels.ravel(), minlength=9).tolist()
    assert class_pixel_counts(labels, 12) == np.bincount(labels.ravel(), minlength=12).tolist()
    labels.flat[0] = 200  # an id beyond the class table still gets its count
    assert class_pixel_counts(labels, 9) == np.bincount(labels.ravel(), minlength=9).tolist()
    wide = labels.astype(np.int64)
    assert class_pixel_counts(wide, 9) == np.bincount(wide.ravel(), minlength=9).tolist()
