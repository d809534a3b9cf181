"""Open a bag for replay, extraction or training: check it holds something, choose its topics.

Why shared (and in the core): ``replay``, ``extract`` and training's bag readers must accept and
refuse the same bags with the same messages (empty bag, missing or unsupported topics), and
estimate their work the same way.
"""

from __future__ import annotations

from pathlib import Path

from .bag_reader import BagReader
from .bag_topics import TopicSelection, select_topics
from .errors import BagError

__all__ = ["EmptyBagError", "open_bag_inputs", "estimated_pairs"]


class EmptyBagError(BagError):
    """The bag holds no messages at all (or none on the selected topics)."""


def open_bag_inputs(bag: Path, distro: str, rgb: str | None, thermal: str | None, label: str | None,
                    detect_label: bool = True) -> tuple[BagReader, TopicSelection]:
    """Open a bag and choose its topics (shared by replay, extract and training).

    Raises:
        BagError: unreadable bag; EmptyBagError: no messages; MissingTopicError /
            UnsupportedTopicError: topics cannot be chosen (messages list the bag's topics).
    """
    reader = BagReader(bag, distro=distro)
    try:
        if not reader.topics or not any(reader.counts.values()):
            raise EmptyBagError(f"bag {bag} holds no messages ({reader.describe_topics()}); nothing to read"
                                + ("; " + "; ".join(reader.report.lines()) if reader.report.damaged else ""))
        topics = select_topics(reader, rgb, thermal, label, detect_label=detect_label)
        empty = [t for t in (topics.rgb, topics.thermal) if reader.counts.get(t) == 0]
        if empty:
            raise EmptyBagError(f"topic(s) {', '.join(empty)} of bag {bag} hold no messages; "
                                f"the bag has: {reader.describe_topics()}")
    except BaseException:
        reader.close()
        raise
    return reader, topics


def estimated_pairs(reader: BagReader, topics: TopicSelection, max_frames: int | None) -> int | None:
    """At most min(RGB messages, thermal messages) pairs (for progress bars); None if unknown."""
    known = [reader.counts.get(t) for t in (topics.rgb, topics.thermal)]
    total = min(k for k in known if k is not None) if all(k is not None for k in known) else None
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)
    return total
