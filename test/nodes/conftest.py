"""Fixtures of the node tests: a fresh ROS domain per test, test weights, node processes.

rclpy comes from the ``ros-rclpy`` wheels (requirements); the tests skip with the reason when
it is not importable, e.g. in an environment installed without the ROS extras.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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
