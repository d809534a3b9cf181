"""Which topics of a bag are the RGB, thermal and (optional) ground-truth label images.

Why: recorded bags name their cameras in every possible way (``/camera/color/image_raw``,
``/flir_boson/image_raw``, ``/lwir/image``); asking the user for topics that can be recognised
is friction, and guessing silently is worse. Detection uses two clues and refuses to guess
between equals:

1. Name hints, matched against the topic's path tokens: ``rgb``, ``color``/``colour``,
   ``visible``/``vis`` for RGB; ``thermal``, ``ir``, ``lwir``, ``infrared``, ``flir``, ``boson``,
   ``lepton`` for thermal; ``label(s)``, ``gt``, ``ground_truth``, ``annotation(s)``,
   ``semantic`` for labels. Topics that look like fusion outputs (``fused``, ``overlay``,
   ``segmentation``) are never inputs.
2. The encoding of the first message: 16-bit gray (``mono16``/``16UC1``) is thermal, colour
   (``rgb8``, ``bgr8``, ...) is RGB, when the names do not decide.

``sensor_msgs/CompressedImage`` topics (image_transport ``compressed``/``compressedDepth``, as
robots usually record) are cameras too: their encoding is the one their ``format`` names
(``"mono16; png compressed mono16"``). When a bag holds a camera both raw and compressed
(``/cam/image_raw`` and ``/cam/image_raw/compressed``), the raw topic is used: it is lossless and
needs no decoding.

Explicit ``--rgb-topic``/``--thermal-topic``/``--label-topic`` always win. Failures list the
bag's topics with their types and message counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bag import CAMERA_MSGTYPES, IMAGE_MSGTYPE
from .bag_reader import BagReader
from .errors import BagError
from .image_codec import message_encoding

__all__ = ["TopicSelection", "select_topics", "UnsupportedTopicError", "MissingTopicError"]

RGB_HINTS = ("rgb", "color", "colour", "visible", "vis", "vi")
THERMAL_HINTS = ("thermal", "ir", "lwir", "infrared", "flir", "boson", "lepton", "therm")
LABEL_HINTS = ("label", "labels", "gt", "ground", "groundtruth", "annotation", "annotations", "semantic")
OUTPUT_HINTS = ("fused", "overlay", "segmentation")
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "8UC3")
_SIXTEEN = ("mono16", "16UC1")
_TRANSPORT_SUFFIXES = ("/compressed", "/compresseddepth")


class MissingTopicError(BagError):
    """A needed topic is absent or cannot be told apart from others (lists the bag's topics)."""


class UnsupportedTopicError(BagError):
    """A topic exists but carries a message type replay cannot decode."""


@dataclass(frozen=True)
class TopicSelection:
    """The chosen input topics and how each was chosen (``"given"``, ``"name"``, ``"encoding"``)."""

    rgb: str
    thermal: str
    label: str | None
    how: dict[str, str]

    def as_dict(self) -> dict[str, object]:
        return {"rgb": self.rgb, "thermal": self.thermal, "label": self.label, "how": dict(self.how)}


def _tokens(topic: str) -> list[str]:
    return [t for t in re.split(r"[/_\-.]+", topic.lower()) if t]


def _has_hint(topic: str, hints: tuple[str, ...]) -> bool:
    return any(tok == h or (len(h) >= 5 and tok.startswith(h)) for tok in _tokens(topic) for h in hints)


def _first_encoding(reader: BagReader, topic: str) -> str | None:
    for message in reader.messages([topic]):
        return message_encoding(message.msg)
    return None


def _check_type(reader: BagReader, topic: str, role: str) -> None:
    if topic not in reader.topics:
        raise MissingTopicError(f"{role} topic {topic} is not in bag {reader.path}; it has: {reader.describe_topics()}")
    msgtype = reader.topics[topic]
    if msgtype not in CAMERA_MSGTYPES:
        raise UnsupportedTopicError(
            f"{role} topic {topic} carries {msgtype}, but replay reads {' and '.join(CAMERA_MSGTYPES)} only. "
            f"The bag has: {reader.describe_topics()}")


def _camera_topics(reader: BagReader) -> list[str]:
    """Image and CompressedImage topics, without the compressed twins of raw topics in the bag."""
    raw = {t for t, m in reader.topics.items() if m == IMAGE_MSGTYPE}

    def twin_of_raw(topic: str) -> bool:
        lower = topic.lower()
        return any(lower.endswith(s) and topic[:-len(s)] in raw for s in _TRANSPORT_SUFFIXES)

    return [t for t, m in sorted(reader.topics.items())
            if m in CAMERA_MSGTYPES and not (m != IMAGE_MSGTYPE and twin_of_raw(t))]


def _unique(candidates: list[str], role: str, reader: BagReader, clue: str) -> str | None:
    if len(candidates) > 1:
        raise MissingTopicError(
            f"several topics look like the {role} camera by {clue} ({', '.join(candidates)}); choose one with "
            f"--{role}-topic. The bag has: {reader.describe_topics()}")
    return candidates[0] if candidates else None


def select_topics(reader: BagReader, rgb: str | None = None, thermal: str | None = None,
                  label: str | None = None, *, detect_label: bool = True) -> TopicSelection:
    """Choose the input topics of a bag (see the module docstring for the rules).

    Args:
        reader: the open bag.
        rgb, thermal, label: explicit topics (checked to exist and to be Images or CompressedImages).
        detect_label: look for a ground-truth label topic when ``label`` is not given.

    Raises:
        MissingTopicError: a role cannot be filled, or several topics fit equally.
        UnsupportedTopicError: a given topic is not an Image or CompressedImage topic, or the bag
            has camera topics of other types only.
    """
    how: dict[str, str] = {}
    for topic, role in ((rgb, "rgb"), (thermal, "thermal"), (label, "label")):
        if topic is not None:
            _check_type(reader, topic, role)
            how[role] = "given"
    images = _camera_topics(reader)
    if not images:
        other = [t for t, m in reader.topics.items() if "Image" in m]
        if other:
            _check_type(reader, other[0], "camera")
        raise MissingTopicError(f"bag {reader.path} has no {' or '.join(CAMERA_MSGTYPES)} topic; "
                                f"it has: {reader.describe_topics()}")
    labels = [t for t in images if _has_hint(t, LABEL_HINTS)]
    inputs = [t for t in images
              if t not in labels and not _has_hint(t, OUTPUT_HINTS) and t not in (rgb, thermal, label)]

    if thermal is None:
        thermal = _unique([t for t in inputs if _has_hint(t, THERMAL_HINTS) and not _has_hint(t, RGB_HINTS)],
                          "thermal", reader, "name")
        how["thermal"] = "name"
    if rgb is None:
        rgb = _unique([t for t in inputs if _has_hint(t, RGB_HINTS) and t != thermal], "rgb", reader, "name")
        how["rgb"] = "name"
    if rgb is None or thermal is None:
        rest = [t for t in inputs if t not in (rgb, thermal)]
        encodings = {t: _first_encoding(reader, t) for t in rest}
        if thermal is None:
            thermal = _unique([t for t in rest if encodings[t] in _SIXTEEN], "thermal", reader, "16-bit encoding")
            how["thermal"] = "encoding"
        if rgb is None:
            rgb = _unique([t for t in rest if encodings[t] in _COLOUR and t != thermal], "rgb", reader,
                          "colour encoding")
            how["rgb"] = "encoding"
        remaining = [t for t in rest if t not in (rgb, thermal)]
        if (rgb is None) != (thermal is None) and len(remaining) == 1:  # the one other camera
            if rgb is None:
                rgb, how["rgb"] = remaining[0], "the only other image topic"
            else:
                thermal, how["thermal"] = remaining[0], "the only other image topic"
    if rgb is None or thermal is None:
        role = "rgb" if rgb is None else "thermal"
        raise MissingTopicError(
            f"cannot tell which topic is the {role} camera in bag {reader.path}; pass --{role}-topic. "
            f"The bag has: {reader.describe_topics()}")
    if label is None and detect_label:
        label = _unique([t for t in labels if t not in (rgb, thermal)], "label", reader, "name")
        how["label"] = "name" if label else "none found"
    return TopicSelection(rgb=rgb, thermal=thermal, label=label, how=how)
