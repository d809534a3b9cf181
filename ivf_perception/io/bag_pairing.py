"""Bag messages → RGB/thermal pairs, exactly as the live node would have paired them.

Why: the value of replay evaluation (and of anything mined from a bag, such as extracted
datasets or training guidance) is that it reproduces live behaviour. Messages are fed to the
shared :class:`~ivf_perception.sync.ApproximateTimePairer` (same slop, queue size and time-jump
threshold as the node, read from the node's pipeline configuration) in the bag's record-time
order, which is the order they arrived in live, keyed by their header stamps. The pairer itself
resets on a time jump (a looped bag, a clock reset), exactly as in the node; this module only
logs the jumps it reports.

Ground-truth labels (a label topic stamped like the RGB image) are attached to the pair whose
RGB header stamp they carry. They may be recorded before or after the pair completes, so a pair
waits for its label for up to :data:`LABEL_WAIT_NS` of record time; pairs are still released in
the order they were formed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ivf_perception.sync import ApproximateTimePairer, PairingStats

from .bag_reader import BagReader, BagRecord
from .bag_topics import TopicSelection
from .image_codec import header_stamp_ns

__all__ = ["FramePair", "PairingLog", "FrameStream", "PairingSettings", "LABEL_WAIT_NS"]

LABEL_WAIT_NS = 2_000_000_000
"""How long (record time) a pair waits for its ground-truth label message."""
_MAX_EVENTS = 20


@dataclass
class FramePair:
    """One paired frame: the decoded (deserialised) messages and where they came from.

    Attributes:
        index: position in pairing order, from 0.
        rgb_msg, thermal_msg: ``sensor_msgs/Image`` objects (rosbags).
        rgb_log_ns, thermal_log_ns: record times of the two messages.
        label_msg: the ground-truth label Image with the RGB stamp, if the bag has one.
    """

    index: int
    rgb_msg: Any
    thermal_msg: Any
    rgb_log_ns: int
    thermal_log_ns: int
    label_msg: Any | None = None

    @property
    def rgb_stamp_ns(self) -> int:
        return header_stamp_ns(self.rgb_msg)

    @property
    def thermal_stamp_ns(self) -> int:
        return header_stamp_ns(self.thermal_msg)

    @property
    def skew_ns(self) -> int:
        """Thermal header stamp minus RGB header stamp."""
        return self.thermal_stamp_ns - self.rgb_stamp_ns

    @property
    def completed_log_ns(self) -> int:
        """Record time at which the pair was complete (when a live node could start on it)."""
        return max(self.rgb_log_ns, self.thermal_log_ns)

    @property
    def frame_id(self) -> str:
        return str(self.rgb_msg.header.frame_id)

    @property
    def name(self) -> str:
        """A file-name-safe identifier: the RGB header stamp in nanoseconds, zero-padded."""
        return f"{self.rgb_stamp_ns:019d}"


@dataclass
class PairingLog:
    """What happened while pairing, beyond the pairer's own counters.

    Attributes:
        stats: the pairer's :class:`~ivf_perception.sync.PairingStats` (live object; its
            ``resets`` counts the time-jump resets).
        events: descriptions of those jumps (the first few).
        skews_ns: thermal − RGB stamp of every pair, in pairing order.
        labels_matched: pairs that received a ground-truth label.
        labels_unmatched: label messages whose stamp matched no pair's RGB stamp.
    """

    stats: PairingStats
    events: list[str] = field(default_factory=list)
    skews_ns: list[int] = field(default_factory=list)
    labels_matched: int = 0
    labels_unmatched: int = 0

    @property
    def resets(self) -> int:
        """Pairer resets after a header stamp jumped back by more than the threshold."""
        return self.stats.resets

    def as_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "resets": self.resets, "time_jumps": list(self.events),
                "labels_matched": self.labels_matched, "labels_unmatched": self.labels_unmatched}


class PairingSettings(Protocol):
    """The pairer's settings, as the node's :class:`~ivf_perception.engine.config.PipelineConfig`
    holds them (a protocol, so that io does not import the engine that builds on it)."""

    @property
    def slop_s(self) -> float: ...

    @property
    def queue_size(self) -> int: ...

    @property
    def time_jump_threshold_s(self) -> float: ...


class FrameStream:
    """Iterate over the pairs of a bag.

    Args:
        reader: the open bag.
        topics: the chosen RGB/thermal/label topics.
        settings: the node's slop, queue size and time-jump threshold (its ``PipelineConfig``).
        on_record: called with every input record read (e.g. to copy inputs to the output bag).
    """

    def __init__(self, reader: BagReader, topics: TopicSelection, settings: PairingSettings,
                 on_record: Callable[[BagRecord], None] | None = None) -> None:
        self.reader = reader
        self.topics = topics
        self.pairer: ApproximateTimePairer[tuple[Any, int]] = ApproximateTimePairer(
            settings.slop_s, settings.queue_size, settings.time_jump_threshold_s)
        self.log = PairingLog(self.pairer.stats)
        self._on_record = on_record
        self._labels: dict[int, tuple[Any, int]] = {}  # stamp -> (label msg, record time)
        self._pending: deque[FramePair] = deque()
        self._count = 0

    def __iter__(self) -> Iterator[FramePair]:
        wanted = [self.topics.rgb, self.topics.thermal] + ([self.topics.label] if self.topics.label else [])
        role = {self.topics.rgb: "rgb", self.topics.thermal: "thermal", self.topics.label: "label"}
        for record in self.reader.records(wanted):
            if self._on_record is not None:
                self._on_record(record)
            msg = self.reader.decode(record)
            if msg is None:
                continue
            stream = role[record.topic]
            if stream == "label":
                self._add_label(msg, record.log_time_ns)
            else:
                self._add_image(stream, msg, record.log_time_ns)
            yield from self._release(record.log_time_ns)
        self.pairer.flush()
        yield from self._release(None)
        self.log.labels_unmatched += len(self._labels)
        self._labels.clear()

    def _add_image(self, stream: str, msg: Any, log_ns: int) -> None:
        pair = self.pairer.add(stream, header_stamp_ns(msg), (msg, log_ns))
        for jump in self.pairer.take_time_jumps():
            if len(self.log.events) < _MAX_EVENTS:
                self.log.events.append(f"{jump.stream} stamp jumped back {jump.back_s:.3f} s at record time "
                                       f"{log_ns}; pairing reset")
        if pair is None:
            return
        (rgb_msg, rgb_log), (th_msg, th_log) = pair.rgb, pair.thermal
        frame = FramePair(self._count, rgb_msg, th_msg, rgb_log, th_log)
        self._count += 1
        self.log.skews_ns.append(pair.skew_ns)
        label = self._labels.pop(pair.rgb_stamp_ns, None)
        if label is not None:
            frame.label_msg = label[0]
            self.log.labels_matched += 1
        self._pending.append(frame)

    def _add_label(self, msg: Any, log_ns: int) -> None:
        stamp = header_stamp_ns(msg)
        for frame in self._pending:
            if frame.label_msg is None and frame.rgb_stamp_ns == stamp:
                frame.label_msg = msg
                self.log.labels_matched += 1
                return
        self._labels[stamp] = (msg, log_ns)

    def _release(self, now_ns: int | None) -> Iterator[FramePair]:
        """Hand out pairs in order once they have their label, waited long enough, or at the end."""
        has_labels = self.topics.label is not None
        while self._pending:
            front = self._pending[0]
            ready = (not has_labels or front.label_msg is not None or now_ns is None
                     or now_ns - front.completed_log_ns > LABEL_WAIT_NS)
            if not ready:
                break
            yield self._pending.popleft()
        if now_ns is not None and self._labels:
            stale = [s for s, (_, t) in self._labels.items() if now_ns - t > LABEL_WAIT_NS]
            for s in stale:
                del self._labels[s]
            self.log.labels_unmatched += len(stale)
