"""Fixtures of the node tests: a fresh ROS domain per test, test weights, node processes, and
fusion nodes driven in-process.

rclpy comes from the ``ros-rclpy`` wheels (requirements); the tests skip with the reason when
it is not importable, e.g. in an environment installed without the ROS extras.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def context(domain_id: int) -> Iterator[Any]:
    """An rclpy context of its own on the test's domain, shut down after the test's nodes."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def make_node(context: Any, test_weights: Path) -> Iterator[Callable[..., Any]]:
    """Build unconfigured ``FusionNode`` s in :func:`context` (test weights on the CPU, 64×80
    warm-up, no stream timeout during a test); ``make_node(**parameters)`` overrides any
    parameter. Closed and destroyed at teardown."""
    from rclpy.parameter import Parameter

    from ivf_perception.nodes.fusion_node import FusionNode

    nodes: list[FusionNode] = []

    def _make(**overrides: Any) -> FusionNode:
        values = {"autostart": False, "weights": str(test_weights), "device": "cpu", "warmup_size": [64, 80],
                  "stream_timeout_s": 600.0, **overrides}
        node = FusionNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        nodes.append(node)
        return node

    yield _make
    for node in nodes:
        node.close()
        node.destroy_node()
