"""Helpers of the node tests: isolated ROS graphs, node/player subprocesses, collecting topics.

Every test gets its own ROS_DOMAIN_ID and discovery limited to localhost, so tests (and other
sessions on the machine) never see each other's topics. Nodes and the player run as real
processes (``sys.executable -m ...``), the way a robot runs them; the test process holds the
subscribers and, where a test needs exact control of the input, the publishers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DDS_PROFILE = REPO / "config" / "fastdds_large_images.xml"
_DOMAIN_COUNTER = itertools.count()


def next_domain_id() -> int:
    """A domain id in 1..100 unique within this session and unlikely to clash with another's."""
    return 1 + (os.getpid() * 7 + next(_DOMAIN_COUNTER)) % 100


def ros_env(domain_id: int, **extra: str) -> dict[str, str]:
    """Environment of a node/player subprocess on ``domain_id``.

    One torch thread (CI has 2 cores, and the same thread count as the test process makes the
    node's arithmetic identical to the offline reference).
    """
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_DEFAULT_PROFILES_FILE=str(DDS_PROFILE), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               AMENT_PREFIX_PATH=os.environ.get("AMENT_PREFIX_PATH", sys.prefix))
    env.update(extra)
    return env


class RosProcess:
    """A node or player subprocess whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - open for the subprocess's life, closed in stop()
        self.proc = subprocess.Popen(self.args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """Ctrl-C (the node's clean exit path), then kill if it hangs; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()


def node_command(*ros_args: str, script: Path | None = None) -> list[str]:
    """The fusion node's command line (or a test script that wraps it) with ROS arguments."""
    head = [sys.executable, str(script)] if script else [sys.executable, "-m", "ivf_perception.nodes.fusion_node"]
    return [*head, "--ros-args", *ros_args]


def params(**values: Any) -> list[str]:
    """``-p name:=value`` arguments; lists in YAML flow style."""
    out: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        out += ["-p", f"{name}:={text}"]
    return out


@dataclass
class Received:
    """A message and the monotonic time it was received by the test process."""

    msg: Any
    at: float


@dataclass
class Collector:
    """Messages received on one topic, with a condition variable to wait on."""

    topic: str
    items: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    subscription: Any = None

    def matched(self) -> bool:
        """Whether a publisher of this topic has been discovered (outputs would now arrive)."""
        return self.subscription is not None and self.subscription.get_publisher_count() > 0

    def add(self, msg: Any) -> None:
        with self.cond:
            self.items.append(Received(msg, time.monotonic()))
            self.cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self.cond:
            return [r.msg for r in self.items]

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float, what: str = "") -> list[Any]:
        """Block until ``predicate(messages)`` holds; raise AssertionError with context on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate([r.msg for r in self.items]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting on {self.topic} for "
                                         f"{what or predicate}; got {len(self.items)} message(s)")
                self.cond.wait(left)
            return [r.msg for r in self.items]


class RosGraph:
    """An rclpy context in the test process on one domain, spun by a background executor."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.domain_id = domain_id
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"ivf_test_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def subscribe(self, msg_type: type, topic: str, *, reliable: bool = True, depth: int = 200) -> Collector:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=depth, reliability=reliability)
        collector = Collector(topic)
        collector.subscription = self.node.create_subscription(msg_type, topic, collector.add, qos)
        return collector

    def publisher(self, msg_type: type, topic: str, depth: int = 50) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 30.0) -> Any:
        """Call a service of a node in another process and return the response."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} did not appear within {timeout:.0f} s")
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f"service {name} did not answer within {timeout:.0f} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def image_msg(array: Any, encoding: str, stamp_ns: int, frame_id: str = "camera") -> Any:
    """An rclpy Image with a header, through the package codec."""
    from ivf_perception.io import make_header, numpy_to_image

    return numpy_to_image(array, encoding, header=make_header(stamp_ns, frame_id))


def diagnostic_status(array_msg: Any, name_part: str = "fusion") -> Any:
    """The fusion node's DiagnosticStatus in a DiagnosticArray (or None)."""
    return next((s for s in array_msg.status if name_part in s.name), None)


def diag_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}
