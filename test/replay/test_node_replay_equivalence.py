"""The live node and bag replay give byte-identical outputs for the same messages (DESIGN §1).

One bag, one params YAML, one weights file. The replay side is the ``ivf-perception replay``
command; the node side is the real lifecycle node driven in-process (its image callback, its
pairer and its worker's decode → infer → publish step), fed the bag's messages in record order
as rclpy messages. The sequence exercises what the two paths share: approximate-time pairing
with a missing and a late thermal frame, a time jump (the bag loops), 16-bit / false-colour
thermal at twice the RGB resolution registered by a homography, and a custom AGC window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from replay_helpers import write_bag

from ivf_perception.cli.replay import main as replay_main
from ivf_perception.io import header_stamp_ns, image_to_numpy, make_header, numpy_to_image, read_image_messages
from ivf_perception.sync import PairingStats

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402  (after the skip)
from rclpy.parameter import Parameter  # noqa: E402

from ivf_perception.nodes.fusion_node import FusionNode  # noqa: E402

RGB_TOPIC, THERMAL_TOPIC = "/cam/rgb", "/cam/thermal"
RGB_SIZE, THERMAL_SIZE = (48, 64), (96, 128)
PERIOD_NS = 100_000_000
NODE_PARAMS = {
    "slop_s": 0.02,
    "queue_size": 5,
    "time_jump_threshold_s": 0.5,
    "agc_low_pct": 2.0,
    "agc_high_pct": 97.0,
    # thermal pixels → RGB pixels: half the resolution, shifted by one RGB pixel
    "homography": [0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0],
}


@pytest.fixture
def context() -> Iterator[rclpy.Context]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=101 + os.getpid() % 100)  # in-process only: nothing is discovered
    yield ctx
    ctx.try_shutdown()


def _thermal(rng: np.random.Generator, encoding: str) -> np.ndarray:
    h, w = THERMAL_SIZE
    ramp = np.linspace(0.0, 1.0, w)[None, :] * np.linspace(0.5, 1.0, h)[:, None]
    if encoding == "mono16":  # raw counts in a narrow band, as a Boson delivers them
        return (21_000 + 1_500 * ramp + rng.integers(0, 300, (h, w))).astype(np.uint16)
    if encoding == "mono8":
        return (200 * ramp + rng.integers(0, 50, (h, w))).astype(np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # false colour


def _bag_entries(thermal_encoding: str, rgb_encoding: str) -> list[tuple]:
    """Eight frames, then the bag loops back to its first stamps (record time runs on)."""
    rng = np.random.default_rng(4)
    entries, record = [], 0
    stamps = [1_000_000_000 + i * PERIOD_NS for i in range(8)] + [1_000_000_000 + i * PERIOD_NS for i in range(3)]
    for i, stamp in enumerate(stamps):
        rgb = rng.integers(0, 256, (*RGB_SIZE, 3), dtype=np.uint8)
        entries.append((RGB_TOPIC, record, stamp, rgb, rgb_encoding))
        record += 1_000_000
        if i == 3:
            continue  # a lost thermal frame: this RGB frame stays unmatched
        skew = 40_000_000 if i == 5 else (-1) ** i * 3_000_000  # frame 5: beyond the 20 ms slop
        entries.append((THERMAL_TOPIC, record, stamp + skew, _thermal(rng, thermal_encoding), thermal_encoding))
        record += PERIOD_NS
    return entries


Outputs = list[tuple[int, bytes]]  # (header stamp, image bytes) per published/written image


def _run_node(context: rclpy.Context, weights: Path, bag: Path) -> tuple[Outputs, Outputs, PairingStats]:
    values = {**NODE_PARAMS, "autostart": False, "weights": str(weights), "device": "cpu", "warmup_size": [48, 64]}
    node = FusionNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node._configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        pairs: list = []
        node._slot.put = pairs.append  # take the pairs from the hand-over instead of the worker thread
        outputs: dict[str, Outputs] = {"fused": [], "labels": []}
        for name, out in outputs.items():
            publisher = node._publishers_by_name[name]
            publisher.publish = lambda msg, out=out: out.append((header_stamp_ns(msg), image_to_numpy(msg).tobytes()))
            # the node encodes only outputs someone subscribes to: stand in for a subscriber
            publisher.get_subscription_count = lambda: 1
        stream = {RGB_TOPIC: "rgb", THERMAL_TOPIC: "thermal"}
        for record in read_image_messages(bag):
            msg = record.msg  # the bag's message, re-encoded as the rclpy message a camera would send
            live = numpy_to_image(image_to_numpy(msg), msg.encoding,
                                  header=make_header(header_stamp_ns(msg), msg.header.frame_id))
            node._on_image(stream[record.topic], live)
        for pair in pairs:
            node._process(pair)
        assert node._failed == 0, node._last_error
        return outputs["fused"], outputs["labels"], node._pairer.stats
    finally:
        node.close()
        node.destroy_node()


def _run_replay(weights: Path, bag: Path, params_file: Path, out: Path) -> tuple[Outputs, Outputs, dict]:
    code = replay_main([str(bag), "--out", str(out), "--params-file", str(params_file), "--weights", str(weights),
                        "--device", "cpu", "--threads", "1", "--no-progress", "--no-fusion-metrics",
                        "--rgb-topic", RGB_TOPIC, "--thermal-topic", THERMAL_TOPIC])
    assert code == 0
    got: dict[str, Outputs] = {"fused": [], "labels": []}
    topics = {"/ivf_perception/fused/image": "fused", "/ivf_perception/segmentation/labels": "labels"}
    for record in read_image_messages(out / "bag", list(topics)):
        got[topics[record.topic]].append((header_stamp_ns(record.msg), image_to_numpy(record.msg).tobytes()))
    return got["fused"], got["labels"], json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(("thermal_encoding", "rgb_encoding"),
                         [("mono16", "rgb8"), ("bgr8", "bgr8"), ("mono8", "rgb8")])
def test_node_and_replay_outputs_are_byte_identical(context, test_weights, tmp_path, thermal_encoding,
                                                    rgb_encoding) -> None:
    bag = tmp_path / "loop"
    write_bag(bag, _bag_entries(thermal_encoding, rgb_encoding))
    params_file = tmp_path / "node.yaml"
    params_file.write_text(yaml.safe_dump({"fusion_node": {"ros__parameters": NODE_PARAMS}}))

    node_fused, node_labels, node_stats = _run_node(context, test_weights, bag)
    replay_fused, replay_labels, metrics = _run_replay(test_weights, bag, params_file, tmp_path / "replay")

    # 11 RGB frames: one lost thermal, one late thermal, and the loop resets the pairer once
    assert len(node_fused) == 9 and node_stats.resets == 1
    assert sorted(node_fused) == sorted(replay_fused), "fused images differ"
    assert sorted(node_labels) == sorted(replay_labels), "label images differ"
    pairing = metrics["pairing"]
    assert (pairing["paired"], pairing["resets"]) == (node_stats.paired, node_stats.resets) == (9, 1)
    assert (pairing["unmatched_rgb"], pairing["unmatched_thermal"]) == (node_stats.unmatched["rgb"],
                                                                         node_stats.unmatched["thermal"])
