"""Frame pairing: one approximate-time policy for the live node and for bag replay.

Why our own: message_filters' Python ApproximateTimeSynchronizer runs the user callback under
its lock and keeps no drop accounting, and it is not installable from PyPI. The same pairing
code serving the node and replay means a replayed bag is paired exactly as it was live, given
the same arrival order.

Policy (greedy, low latency): when a message arrives, it is matched with the queued message of
the other stream whose stamp is nearest to its own, if that difference is within ``slop``.
Queued messages of either stream that are older than the matched ones can no longer be paired
and are counted as unmatched. A message that finds no partner waits in its stream's bounded
queue (``queue_size``); overflowing the queue drops the oldest as unmatched. Pairing happens
as soon as a partner exists, so a pair is never held back waiting for a possibly closer one.

Time jumps: each stream's newest stamp is tracked here (once, for every front door). A stamp
older than its stream's newest by more than ``time_jump_s`` (a looped bag, a clock reset) resets
the pairer before the message is offered: queued messages count as unmatched, the stamp history
is forgotten, and the jump is recorded (:meth:`ApproximateTimePairer.take_time_jumps`) so the
caller can log it. Smaller steps back are only counted as out-of-order.

The second half is :class:`LatestSlot`, a keep-latest hand-over between the subscription
callbacks and one inference worker: a slow engine replaces (drops, counted as stale) pairs it
had no time for instead of building a queue and latency.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Pair", "PairingStats", "TimeJump", "ApproximateTimePairer", "LatestSlot", "STREAMS"]

T = TypeVar("T")
STREAMS = ("rgb", "thermal")


@dataclass(frozen=True)
class Pair(Generic[T]):
    """A matched RGB/thermal pair with their header stamps (ns)."""

    rgb_stamp_ns: int
    thermal_stamp_ns: int
    rgb: T
    thermal: T

    @property
    def skew_ns(self) -> int:
        """Thermal stamp minus RGB stamp."""
        return self.thermal_stamp_ns - self.rgb_stamp_ns


@dataclass(frozen=True)
class TimeJump:
    """A stamp that jumped back past the threshold and reset the pairer.

    Attributes:
        stream: ``rgb`` or ``thermal``.
        newest_ns: the stream's newest stamp before the jump.
        stamp_ns: the stamp that jumped back.
    """

    stream: str
    newest_ns: int
    stamp_ns: int

    @property
    def back_s(self) -> float:
        """How far back the stamp jumped, seconds."""
        return (self.newest_ns - self.stamp_ns) / 1e9


@dataclass
class PairingStats:
    """Counters of the pairing and hand-over stages, published in stats and diagnostics.

    ``resets`` counts time-jump resets; :meth:`as_dict` leaves it out because reports list it
    next to the jumps themselves.
    """

    received: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STREAMS})
    unmatched: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STREAMS})
    out_of_order: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STREAMS})
    paired: int = 0
    dropped_stale: int = 0
    resets: int = 0
    skew_abs_sum_ns: int = 0
    skew_abs_max_ns: int = 0

    @property
    def skew_mean_ms(self) -> float:
        return self.skew_abs_sum_ns / self.paired / 1e6 if self.paired else 0.0

    @property
    def skew_max_ms(self) -> float:
        return self.skew_abs_max_ns / 1e6

    def as_dict(self) -> dict[str, float | int]:
        """Flat counters, e.g. for JSON reports."""
        flat: dict[str, float | int] = {}
        for s in STREAMS:
            flat[f"received_{s}"] = self.received[s]
            flat[f"unmatched_{s}"] = self.unmatched[s]
            flat[f"out_of_order_{s}"] = self.out_of_order[s]
        flat.update(paired=self.paired, dropped_stale=self.dropped_stale,
                    skew_mean_ms=self.skew_mean_ms, skew_max_ms=self.skew_max_ms)
        return flat


class ApproximateTimePairer(Generic[T]):
    """Pairs RGB and thermal messages by header stamp (see the module docstring for the policy).

    Thread-safe: callbacks of different streams may call :meth:`add` concurrently. It never
    calls user code, so no callback runs under its lock.

    Args:
        slop_s: largest accepted |thermal stamp − RGB stamp|, in seconds.
        queue_size: messages kept per stream while waiting for a partner.
        time_jump_s: a stamp this much older than its stream's newest resets the pairer
            (see the module docstring); None never resets.
    """

    def __init__(self, slop_s: float = 0.05, queue_size: int = 10, time_jump_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[tuple[int, T]]] = {s: deque() for s in STREAMS}
        self._newest: dict[str, int | None] = {s: None for s in STREAMS}
        self._jumps: list[TimeJump] = []
        self.stats = PairingStats()
        self.set_slop(slop_s)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = int(queue_size)
        if time_jump_s is not None and not time_jump_s >= 0.0:
            raise ValueError(f"time_jump_s must be >= 0 seconds or None, got {time_jump_s}")
        self._jump_ns = None if time_jump_s is None else int(round(time_jump_s * 1e9))

    @property
    def slop_s(self) -> float:
        return self._slop_ns / 1e9

    def set_slop(self, slop_s: float) -> None:
        """Change the slop at runtime (a safe parameter of the node)."""
        if not slop_s >= 0.0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
        self._slop_ns = int(round(slop_s * 1e9))

    def add(self, stream: str, stamp_ns: int, item: T) -> Pair[T] | None:
        """Offer one message; returns the pair it completes, or None."""
        if stream not in self._queues:
            raise ValueError(f"unknown stream '{stream}'; expected one of {', '.join(STREAMS)}")
        other = "thermal" if stream == "rgb" else "rgb"
        with self._lock:
            newest = self._newest[stream]
            if newest is not None and self._jump_ns is not None and newest - stamp_ns > self._jump_ns:
                self._jumps.append(TimeJump(stream, newest, stamp_ns))
                self.stats.resets += 1
                self._clear()
                newest = None
            self.stats.received[stream] += 1
            if newest is not None and stamp_ns < newest:
                self.stats.out_of_order[stream] += 1
            self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)

            candidates = self._queues[other]
            best = min(range(len(candidates)), key=lambda i: abs(candidates[i][0] - stamp_ns), default=None)
            if best is not None and abs(candidates[best][0] - stamp_ns) <= self._slop_ns:
                partner_stamp, partner = candidates[best]
                del candidates[best]
                self._discard_older(other, partner_stamp)
                self._discard_older(stream, stamp_ns)
                pair = self._make_pair(stream, stamp_ns, item, partner_stamp, partner)
                self._record(pair)
                return pair
            queue = self._queues[stream]
            queue.append((stamp_ns, item))
            if len(queue) > self.queue_size:
                queue.popleft()
                self.stats.unmatched[stream] += 1
            return None

    def flush(self) -> None:
        """Count everything still waiting as unmatched (end of a bag, node shutdown)."""
        with self._lock:
            self._flush()

    def reset(self) -> None:
        """Forget queued messages and stamp history (a bag loop restarted time); counters stay."""
        with self._lock:
            self._clear()

    def take_time_jumps(self) -> list[TimeJump]:
        """The time jumps that reset the pairer since the last call (for the caller's log)."""
        with self._lock:
            jumps, self._jumps = self._jumps, []
            return jumps

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {s: len(q) for s, q in self._queues.items()}

    def _flush(self) -> None:
        for s, q in self._queues.items():
            self.stats.unmatched[s] += len(q)
            q.clear()

    def _clear(self) -> None:
        self._flush()
        self._newest = {s: None for s in STREAMS}

    def _discard_older(self, stream: str, stamp_ns: int) -> None:
        """Drop queued messages of ``stream`` older than ``stamp_ns``: they can no longer pair."""
        queue = self._queues[stream]
        while queue and queue[0][0] < stamp_ns:
            queue.popleft()
            self.stats.unmatched[stream] += 1
        if any(s < stamp_ns for s, _ in queue):  # out-of-order arrivals sit behind newer ones
            kept = deque((s, it) for s, it in queue if s >= stamp_ns)
            self.stats.unmatched[stream] += len(queue) - len(kept)
            self._queues[stream] = kept

    def _make_pair(self, stream: str, stamp_ns: int, item: T, partner_stamp: int, partner: T) -> Pair[T]:
        if stream == "rgb":
            return Pair(stamp_ns, partner_stamp, item, partner)
        return Pair(partner_stamp, stamp_ns, partner, item)

    def _record(self, pair: Pair[T]) -> None:
        self.stats.paired += 1
        skew = abs(pair.skew_ns)
        self.stats.skew_abs_sum_ns += skew
        self.stats.skew_abs_max_ns = max(self.stats.skew_abs_max_ns, skew)


class LatestSlot(Generic[T]):
    """Keep-latest hand-over from producers (callbacks) to one consumer (inference worker).

    ``put`` never blocks; a value that was not taken yet is replaced and counted in
    ``stats.dropped_stale``. ``get`` blocks until a value arrives, the timeout expires or the
    slot is closed.
    """

    def __init__(self, stats: PairingStats | None = None) -> None:
        self._cond = threading.Condition()
        self._value: T | None = None
        self._has_value = False
        self._closed = False
        self.stats = stats if stats is not None else PairingStats()

    def put(self, value: T) -> None:
        with self._cond:
            if self._has_value:
                self.stats.dropped_stale += 1
            self._value, self._has_value = value, True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The latest value, or None on timeout or when closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._has_value or self._closed, timeout=timeout):
                return None
            if not self._has_value:
                return None
            value, self._value, self._has_value = self._value, None, False
            return value

    def close(self) -> None:
        """Wake the consumer for shutdown; later ``get`` calls return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
