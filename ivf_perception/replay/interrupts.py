"""Ctrl-C between frames, never inside one: the replay's commit of a frame is indivisible.

Why: a replay interrupted while it writes a frame's four messages (fused, labels, overlay,
stats) and counts it left a bag with a half-written frame, or a frame in the bag that the
partial report did not count. Inside :func:`interrupts_deferred` a SIGINT is only recorded; it
takes effect (as ``KeyboardInterrupt``, or the previous handler) when the block ends, so the
report counts exactly the frames the output bag holds.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["interrupts_deferred"]


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT until the block has finished (main thread only: elsewhere signals are not
    delivered to Python code anyway, and the handler cannot be installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[FrameType | None] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(frame)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous != signal.SIG_IGN:  # the default action of SIGINT in Python code
                raise KeyboardInterrupt
