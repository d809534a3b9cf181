"""``ivf-perception play`` / ``node`` / ``bench-node`` and the ``fusion_node`` console script."""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import Image

from ivf_perception.cli.main import main as cli
from ivf_perception.io import header_stamp_ns, read_image_messages
from ivf_perception.scenes import SceneConfig, write_scene_bag

RGB, THERMAL = "/camera/rgb/image", "/camera/thermal/image"


def test_player_publishes_the_recorded_messages_unchanged_and_loops(graph, spawn, tmp_path: Path) -> None:
    bag = write_scene_bag(tmp_path / "b", 5, SceneConfig(height=64, width=64, seed=1), fps=30.0,
                          label_topic=None, thermal_encoding="mono16")
    rgb, thermal = graph.subscribe(Image, RGB), graph.subscribe(Image, THERMAL)
    player = spawn([sys.executable, "-m", "ivf_perception.cli.main", "play", str(bag), "--loop", "--rate", "2",
                    "--wait-for-subscribers", "120", "--delay", "0.5"], "player")
    rgb.wait_for(lambda ms: len(ms) >= 12, 120, "two passes and more")
    thermal.wait_for(lambda ms: len(ms) >= 12, 30, "two passes and more")
    assert player.stop() == 0, "Ctrl-C ends the player cleanly"

    recorded = {t: [m.msg for m in read_image_messages(bag, [t])] for t in (RGB, THERMAL)}
    for topic, got in ((RGB, rgb.messages), (THERMAL, thermal.messages)):
        stamps = [header_stamp_ns(m) for m in got]
        expected = [header_stamp_ns(m) for m in recorded[topic]]
        wraps = [i + 1 for i in range(len(stamps) - 1) if stamps[i + 1] < stamps[i]]
        assert wraps, "the loop restarts the stamps"
        assert stamps[wraps[0]:wraps[0] + 5] == expected, "a full pass replays the recorded stamps in order"
        for m in got[wraps[0]:wraps[0] + 5]:
            original = recorded[topic][expected.index(header_stamp_ns(m))]
            assert m.encoding == original.encoding and m.step == original.step
            assert m.header.frame_id == original.header.frame_id
            np.testing.assert_array_equal(np.frombuffer(bytes(m.data), np.uint8), original.data)
    assert thermal.messages[0].encoding == "mono16"


def test_play_and_node_report_user_errors(tmp_path: Path, capsys) -> None:
    assert cli(["play", str(tmp_path / "missing")]) == 2
    assert "bag not found" in capsys.readouterr().err
    assert cli(["play", str(tmp_path), "--rate", "0"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err
    bag = write_scene_bag(tmp_path / "b", 1, SceneConfig(height=64, width=64), label_topic=None)
    assert cli(["play", str(bag), "--topics", "/nope", "--no-dds-profile"]) == 2
    assert "topics ['/nope'] are not in bag" in capsys.readouterr().err
    assert cli(["node", "--params-file", str(tmp_path / "none.yaml")]) == 2
    assert "parameter file" in capsys.readouterr().err
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c}" in out for c in ("node", "play", "bench-node"))


def test_bench_node_busy_processes_run_inside_the_block_and_are_reaped() -> None:
    from ivf_perception.cli.bench_node import _busy_processes

    with _busy_processes(2):
        children = [p for p in _children() if "while True: pass" in " ".join(p)]
        assert len(children) == 2
    assert not [p for p in _children() if "while True: pass" in " ".join(p)]


def _children() -> list[list[str]]:
    """Command lines of this process's direct children (Linux /proc)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me:
                found.append((stat.parent / "cmdline").read_bytes().decode().split("\0"))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_bench_node_refuses_unknown_outputs(capsys) -> None:
    assert cli(["bench-node", "--outputs", "fused,depth"]) == 2
    assert "unknown output(s) depth" in capsys.readouterr().err


def test_fusion_node_console_script_is_registered() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("fusion_node") == "ivf_perception.nodes.fusion_node:main"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_node_measures_overhead_and_rate(domain_id: int, tmp_path: Path, capsys) -> None:
    """One short run with a busy process beside the node, one thread, labels subscribed."""
    out = tmp_path / "bench.json"
    assert cli(["bench-node", "--size", "64x80", "--seconds", "2", "--warmup-seconds", "1", "--variant",
                "test_s4fusion", "--preset", "test", "--domain-id", str(domain_id), "--json", str(out),
                "--threads", "1", "--contention", "1", "--outputs", "labels"]) == 0
    table = capsys.readouterr().out
    assert "| node overhead ms |" in table and "test_s4fusion test (none)" in table
    assert "threads 1, 1 busy process(es)" in table and "node work" in table
    result = json.loads(out.read_text())
    assert result["config"]["contention"] == 1 and result["config"]["outputs"] == ["fused", "labels", "stats"]
    stages = result["node_stages_ms"]
    assert {"decode", "preprocess", "inference", "postprocess", "publish images", "stats", "node work"} <= set(stages)
    assert result["end_to_end_ms"]["p90_over_p50"] >= 1.0
    assert result["frames_fused"] > 0 and result["output_rate_hz"] > 0
    c = result["counters"]
    assert c["processed"] == result["frames_fused"] - 1  # every output between the first and the last
    assert abs(c["paired"] - (c["processed"] + c["dropped_stale"] + c["failed"])) <= 1  # one may sit in the slot
    e2e, engine, overhead = (result[k]["median"] for k in ("end_to_end_ms", "engine_ms", "overhead_ms"))
    assert e2e > engine > 0 and overhead == pytest.approx(e2e - engine, abs=max(1.0, 0.5 * e2e))
