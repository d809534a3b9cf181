"""Publish a rosbag2's topics with their recorded timing (``ivf-perception play``).

Why: ``ros2 bag play`` (rosbag2_py) is not installable from PyPI, yet tests and demos need to
feed the live node from a bag. Messages are read with ``rosbags`` and published as their
recorded CDR bytes (rclpy publishes serialized messages directly), so what arrives is exactly
what was recorded: original header stamps, encodings, ``step`` padding and endianness, with
no decode/encode cost at 30 Hz. Timing follows the bag's record times, scaled by ``rate``.
With ``clock`` the player also publishes ``/clock`` (rosgraph_msgs/Clock) at each message's
record time, as ``ros2 bag play --clock`` does, so nodes run with ``use_sim_time:=true`` see
the bag's time: their latency, timers and diagnostics stamps then match the recorded stamps.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivf_perception.io.bag import CAMERA_MSGTYPES, get_typestore, list_topics
from ivf_perception.io.errors import BagError

__all__ = ["BagPlayer", "PlaybackSummary", "message_class"]


def message_class(msgtype: str) -> type:
    """The rclpy class of a ROS 2 type name such as ``sensor_msgs/msg/Image``.

    Raises:
        BagError: the name is malformed or its Python package is not installed.
    """
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise BagError(f"cannot publish type '{msgtype}': expected package/msg/Name")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError) as exc:
        raise BagError(f"cannot publish type '{msgtype}': its rclpy message package is not installed ({exc})") from None


@dataclass
class PlaybackSummary:
    """What a playback published."""

    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    duration_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.published.values())


class BagPlayer:
    """Publishes chosen topics of one rosbag2 through an rclpy node.

    Args:
        node: the node whose publishers are used (topics keep their recorded, absolute names;
            remap them with ``--ros-args -r /recorded/topic:=/new/topic``).
        bag: rosbag2 folder (MCAP or SQLite3).
        topics: topics to publish; None = every ``sensor_msgs/msg/Image`` and ``CompressedImage`` topic.
        rate: playback speed factor (2.0 = twice as fast).
        loop: start again at the end (header stamps then jump back, as with ``ros2 bag play -l``).
        qos_depth: history depth of the reliable publishers (reliable matches reliable and
            best-effort subscribers alike).
        clock: publish ``/clock`` with the record time of each message (before the message).

    Raises:
        BagNotFoundError, BagError: not a rosbag2, unknown topics, or no topic to publish.
        ValueError: ``rate`` is not positive.
    """

    def __init__(self, node: Any, bag: str | Path, topics: Sequence[str] | None = None, *,
                 rate: float = 1.0, loop: bool = False, qos_depth: int = 10,
                 clock: bool = True) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.bag = Path(bag)
        if self.bag.suffix == ".bag":
            raise BagError(f"{self.bag} is a ROS 1 bag; convert it with `rosbags-convert --src {self.bag}` first")
        available = list_topics(self.bag)
        listing = ", ".join(f"{t} [{m}]" for t, m in sorted(available.items())) or "none"
        if topics is None:
            chosen = sorted(t for t, m in available.items() if m in CAMERA_MSGTYPES)
            if not chosen:
                raise BagError(f"bag {self.bag} has no {' or '.join(CAMERA_MSGTYPES)} topics; it has: {listing}")
        else:
            chosen = list(dict.fromkeys(topics))
            missing = [t for t in chosen if t not in available]
            if missing:
                raise BagError(f"topics {missing} are not in bag {self.bag}; it has: {listing}")
        self.topics = chosen
        self.rate = float(rate)
        self.loop = bool(loop)
        qos = QoSProfile(depth=int(qos_depth), reliability=ReliabilityPolicy.RELIABLE)
        self._node = node
        self._publishers = {t: node.create_publisher(message_class(available[t]), t, qos) for t in chosen}
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, "/clock", qos)

    def wait_for_subscribers(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Wait until every topic has a subscriber (so the first messages are not lost), or ``stop``."""
        deadline = time.monotonic() + timeout_s
        stop = stop or threading.Event()
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self._publishers.values()):
                return True
            if stop.wait(0.05):
                break
        return all(p.get_subscription_count() > 0 for p in self._publishers.values())

    def play(self, stop: threading.Event | None = None) -> PlaybackSummary:
        """Publish until the bag ends (or forever with ``loop``) or ``stop`` is set."""
        from rclpy.duration import Duration
        from rosbags.highlevel import AnyReader

        stop = stop or threading.Event()
        summary = PlaybackSummary(published={t: 0 for t in self.topics})
        started = time.monotonic()
        while not stop.is_set():
            with AnyReader([self.bag], default_typestore=get_typestore()) as reader:
                connections = [c for c in reader.connections if c.topic in self._publishers]
                first_ns: int | None = None
                loop_start = time.monotonic()
                for conn, record_ns, raw in reader.messages(connections=connections):
                    first_ns = record_ns if first_ns is None else first_ns
                    delay = loop_start + (record_ns - first_ns) / 1e9 / self.rate - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    if self._clock_pub is not None:
                        self._clock_pub.publish(_clock_message(record_ns))
                    self._publishers[conn.topic].publish(bytes(raw))
                    summary.published[conn.topic] += 1
            summary.loops += 1
            if not self.loop:
                break
        # Let reliable subscribers receive the tail, /clock's too: a process that exits right
        # after play() drops whatever its subscribers have not acknowledged yet.
        tail = list(self._publishers.values())
        if self._clock_pub is not None:
            tail.append(self._clock_pub)
        for pub in tail:
            pub.wait_for_all_acked(Duration(seconds=2))
        summary.duration_s = time.monotonic() - started
        return summary


def _clock_message(ns: int) -> Any:
    """A rosgraph_msgs/Clock at ``ns`` nanoseconds (the bag's record time)."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    return Clock(clock=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000))
