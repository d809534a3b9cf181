"""Diagnostics of the fusion node: rates, and one status assembled from a snapshot.

Why separate from the node: the rules (which condition is a WARN, which an ERROR, what the
operator reads in ``rqt_robot_monitor``) are the part people rely on when a robot misbehaves,
so they are a pure function of a :class:`HealthSnapshot`, tested without ROS. Only
:func:`to_diagnostic_array` builds ROS messages (imported lazily).

Levels: ERROR while the engine is missing (configure failed) or a frame failed during the last
diagnostics period (decode error, engine error, CUDA out of memory); WARN while the node is
active and an input stream is silent for ``stream_timeout_s`` (or a camera_info disagrees with
its images), or in any state while a peer's QoS is incompatible with one of the node's
subscriptions or publishers; OK otherwise. Each condition clears by itself when its cause goes away.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OK", "WARN", "ERROR", "RateMeter", "StageWindow", "StreamHealth", "HealthSnapshot", "HealthReport",
           "assess_health", "to_diagnostic_array"]

OK, WARN, ERROR = 0, 1, 2
_LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


class RateMeter:
    """Events per second over a sliding window (thread-safe; the worker and callbacks tick it).

    Args:
        window_s: how far back events count; a rate over a few seconds is what an operator
            compares with the camera's frame rate.
    """

    def __init__(self, window_s: float = 2.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self._first: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._first is None:
                self._first = now
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second in the last ``window_s`` (or since the first event, if sooner)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if not self._times or self._first is None:
                return 0.0
            span = min(self.window_s, max(now - self._first, 1e-3))
            return len(self._times) / span

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


class StageWindow:
    """Per-frame durations of named stages over the last ``size`` frames, as medians.

    Why medians of a short window: the operator (and ``bench-node``) wants to know what each
    stage costs now; a mean since activation hides a regression behind hours of good frames,
    and one slow frame (a page fault, a preempted thread) should not move the figure.

    Thread-safe: the worker records, the diagnostics timer reads.
    """

    def __init__(self, size: int = 30) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self._values: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, stages_ms: dict[str, float]) -> None:
        """Add one frame's stage durations (stages a frame skipped simply get no sample)."""
        with self._lock:
            for name, ms in stages_ms.items():
                self._values.setdefault(name, deque(maxlen=self.size)).append(float(ms))

    def medians(self) -> dict[str, float]:
        """Median milliseconds per stage, in the order stages were first seen."""
        with self._lock:
            return {name: statistics.median(v) for name, v in self._values.items() if v}


@dataclass
class StreamHealth:
    """One input stream as the diagnostics see it.

    Attributes:
        topic: resolved topic name (after remapping), shown to the operator.
        received: messages since activation.
        rate_hz: recent message rate.
        silent_s: seconds since the last message (or since activation when none arrived).
        size_mismatch: a camera_info whose width/height differs from the images, as text.
        qos: the subscription's effective QoS (after overrides), e.g. ``best_effort, keep_last 5, volatile``.
    """

    topic: str
    received: int
    rate_hz: float
    silent_s: float
    size_mismatch: str = ""
    qos: str = ""


@dataclass
class HealthSnapshot:
    """Everything the status is computed from, read by the node at one moment."""

    state: str
    device: str = ""
    variant: str = ""
    streams: dict[str, StreamHealth] = field(default_factory=dict)
    qos_reliability: str = ""
    stream_timeout_s: float = 2.0
    output_rate_hz: float = 0.0
    latency_ms: float | None = None
    latency_basis: str = "header stamp"
    processing_ms: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float | int | str] = field(default_factory=dict)
    failed_recently: int = 0
    last_error: str = ""
    last_error_age_s: float | None = None
    configure_error: str = ""
    qos_problems: list[str] = field(default_factory=list)


@dataclass
class HealthReport:
    """The assessed status: level, one-line message and key/value details."""

    level: int
    message: str
    values: list[tuple[str, str]]

    @property
    def level_name(self) -> str:
        return _LEVEL_NAMES[self.level]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def assess_health(s: HealthSnapshot) -> HealthReport:
    """The diagnostic status of a snapshot (rules in the module docstring)."""
    problems: list[tuple[int, str]] = []
    if s.configure_error:
        problems.append((ERROR, f"not configured: {s.configure_error}"))
    if s.failed_recently:
        problems.append((ERROR, f"{s.failed_recently} frame(s) failed recently: {s.last_error}"))
    if s.state == "active":
        for name, st in s.streams.items():
            if st.silent_s >= s.stream_timeout_s:
                what = "no messages yet" if st.received == 0 else f"silent for {st.silent_s:.1f} s"
                hint = (f"; check the remapping and that the publisher's QoS matches "
                        f"(subscription: {st.qos or s.qos_reliability})") if st.received == 0 else ""
                problems.append((WARN, f"{name} input {st.topic}: {what}{hint}"))
            if st.size_mismatch:
                problems.append((WARN, f"{name} input {st.topic}: {st.size_mismatch}"))
    problems += [(WARN, f"QoS mismatch: {text}") for text in s.qos_problems]

    if problems:
        level = max(p[0] for p in problems)
        message = "; ".join(text for lvl, text in problems if lvl == level)
        if s.state == "active" and level == ERROR and not s.configure_error:
            message += f" (fusing at {s.output_rate_hz:.1f} Hz)"
    elif s.state == "active":
        level, message = OK, f"fusing at {s.output_rate_hz:.1f} Hz"
    else:
        level, message = OK, f"{s.state}; no processing"

    values: list[tuple[str, str]] = [("state", s.state), ("device", s.device or "n/a"),
                                     ("variant", s.variant or "n/a")]
    for name, st in s.streams.items():
        values += [(f"{name} topic", st.topic), (f"{name} QoS", st.qos or "n/a"),
                   (f"{name} rate (Hz)", _fmt(st.rate_hz)), (f"{name} received", str(st.received)),
                   (f"{name} silent (s)", _fmt(st.silent_s))]
    values += [("output rate (Hz)", _fmt(s.output_rate_hz)),
               ("latency stamp->published (ms)", _fmt(s.latency_ms)),
               ("latency measured from", s.latency_basis),
               ("processing (ms)", _fmt(s.processing_ms))]
    values += [(f"median {name} (ms)", _fmt(ms, 2)) for name, ms in s.stage_ms.items()]
    values += [(key, str(val)) for key, val in s.counters.items()]
    values += [("QoS mismatches", "; ".join(s.qos_problems) or "none"),
               ("last error", s.last_error or "none"),
               ("last error age (s)", _fmt(s.last_error_age_s))]
    return HealthReport(level, message, values)


def to_diagnostic_array(report: HealthReport, *, name: str, hardware_id: str, stamp: Any) -> Any:
    """Wrap a report in a ``diagnostic_msgs/DiagnosticArray`` stamped with ``stamp`` (a Time)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from std_msgs.msg import Header

    status = DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message,
                              hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in report.values])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
