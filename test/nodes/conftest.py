"""Fixtures of the node tests: a fresh ROS domain per test, test weights, node processes.

rclpy comes from the ``ros-rclpy`` wheels (requirements); the tests skip with the reason when
it is not importable, e.g. in an environment installed without the ROS extras.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from rosgraph_helpers import DDS_PROFILE, RosGraph, RosProcess, next_domain_id, ros_env

# The in-process participant reads these when rclpy creates it.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(DDS_PROFILE)

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")


@pytest.fixture
def domain_id() -> int:
    return next_domain_id()


@pytest.fixture
def graph(domain_id: int) -> Iterator[RosGraph]:
    g = RosGraph(domain_id)
    yield g
    g.close()


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engine weights of the micro test model (seeded), so node and reference load identical models."""
    from ivf_perception.engine import WeightsInfo, save_weights
    from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
    from ivf_perception.models import build_model

    torch.manual_seed(1234)
    model = build_model("test_s4fusion", num_classes=len(MFNET_CLASSES))
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=len(MFNET_CLASSES),
                       classes=list(MFNET_CLASSES), palette=list(MFNET_PALETTE))
    return save_weights(model.state_dict(), tmp_path_factory.mktemp("weights") / "test_s4fusion.safetensors", info)


@pytest.fixture
def spawn(domain_id: int, tmp_path: Path) -> Iterator[Callable[..., RosProcess]]:
    """Start processes on the test's domain; stopped (Ctrl-C) at teardown, logs printed on failure."""
    procs: list[RosProcess] = []

    def _spawn(args: list[str], name: str = "proc", **env: str) -> RosProcess:
        proc = RosProcess(args, ros_env(domain_id, **env), tmp_path / f"{name}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        proc.stop()
    for proc in procs:
        print(f"----- {' '.join(proc.args[:4])} ... (exit {proc.proc.returncode}) -----\n{proc.output()}")
