"""``ivf_perception_msgs/msg/FusionStats`` for rclpy (live node) and rosbags (bag replay) alike.

Why here: the live node publishes FusionStats through the interface package built from
``ivf_perception_msgs/msg/FusionStats.msg`` (rclpy), while bag replay writes the same message
into bags with ``rosbags``, which knows only the types registered with its typestore. Both must use the very
same definition, so this module reads the one ``.msg`` file and registers its text with rosbags
(:func:`register_fusion_stats`), and :class:`FusionStatsValues` fills either message family
from one set of plain Python values, so the node and replay cannot drift apart.

Where the definition is read from (first found): the source tree's
``ivf_perception_msgs/msg/FusionStats.msg`` (editable installs, CI), ``share/ivf_perception/msg/``
(installed with this package by ``setup.py``) or ``share/ivf_perception_msgs/msg/`` (installed by
the interface package) under ``sys.prefix`` and every ``AMENT_PREFIX_PATH`` entry.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import IVFIOError

__all__ = [
    "FUSION_STATS_MSGTYPE",
    "FusionStatsValues",
    "fusion_stats_definition",
    "fusion_stats_definition_path",
    "register_fusion_stats",
    "rclpy_fusion_stats_type",
]

FUSION_STATS_MSGTYPE = "ivf_perception_msgs/msg/FusionStats"
_MSG_FILE = "FusionStats.msg"


def _candidate_paths() -> list[Path]:
    paths = [Path(__file__).resolve().parents[2] / "ivf_perception_msgs" / "msg" / _MSG_FILE]
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        for package in ("ivf_perception", "ivf_perception_msgs"):
            paths.append(Path(prefix) / "share" / package / "msg" / _MSG_FILE)
    return paths


def fusion_stats_definition_path() -> Path:
    """The ``FusionStats.msg`` file in use (see the module docstring for the search order).

    Raises:
        IVFIOError: no copy was found; lists where it looked.
    """
    candidates = _candidate_paths()
    for path in candidates:
        if path.is_file():
            return path
    raise IVFIOError(
        f"{_MSG_FILE} not found; looked in: {', '.join(str(p) for p in candidates)}. Reinstall "
        "ivf_perception (it installs share/ivf_perception/msg/) or set AMENT_PREFIX_PATH to its prefix"
    )


@functools.lru_cache(maxsize=1)
def fusion_stats_definition() -> str:
    """The text of ``FusionStats.msg``, exactly as the interface package is built from."""
    return fusion_stats_definition_path().read_text()


def register_fusion_stats(typestore: Any) -> type:
    """Register FusionStats with a rosbags typestore (idempotent) and return its class.

    Args:
        typestore: e.g. ``ivf_perception.io.bag.get_typestore("kilted")``.

    Returns:
        The rosbags dataclass of ``ivf_perception_msgs/msg/FusionStats``; write it with
        ``writer.add_connection(topic, FUSION_STATS_MSGTYPE, typestore=typestore)`` and
        ``typestore.serialize_cdr(msg, FUSION_STATS_MSGTYPE)``.
    """
    if FUSION_STATS_MSGTYPE not in typestore.types:
        from rosbags.typesys import get_types_from_msg

        typestore.register(get_types_from_msg(fusion_stats_definition(), FUSION_STATS_MSGTYPE))
    return typestore.types[FUSION_STATS_MSGTYPE]


def rclpy_fusion_stats_type() -> type:
    """The rclpy class ``ivf_perception_msgs.msg.FusionStats``.

    Raises:
        ImportError: the interface package is not built/installed, with how to build it.
    """
    try:
        from ivf_perception_msgs.msg import FusionStats
    except ImportError as exc:
        raise ImportError(
            f"the ROS interface package ivf_perception_msgs is not installed ({exc}); build "
            "ivf_perception_msgs/ with `colcon build` (ROS install) or `make venv` (pip wheels)"
        ) from exc
    return FusionStats


_HEADER_FIELDS = frozenset(("stamp_ns", "frame_id", "thermal_stamp_ns"))


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Pixels per class id of a label image, ``num_classes`` entries at least (more if ids exceed it).

    uint8 labels (what the engine produces) are counted by OpenCV's histogram, which reads the
    bytes as they are; ``np.bincount`` first widens them to 64-bit (480x640: 0.33 -> 0.19 ms).
    """
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 and labels.ndim == 2 and labels.size:
        hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256]).ravel()
        used = max(num_classes, int(np.flatnonzero(hist)[-1]) + 1)
        return [int(v) for v in hist[:used]]
    return np.bincount(labels.ravel(), minlength=num_classes).tolist()


@functools.lru_cache(maxsize=4)
def _missing_fields(msg_type: type, names: tuple[str, ...]) -> frozenset[str]:
    """Fields of ours that an installed (older) interface package lacks; warned about once."""
    known = set(msg_type.get_fields_and_field_types())  # type: ignore[attr-defined]
    missing = frozenset(n for n in names if n not in known)
    if missing:
        logging.getLogger(__name__).warning(
            "the installed ivf_perception_msgs FusionStats lacks %s (built from an older FusionStats.msg); "
            "those values are left out of the published messages until it is rebuilt (make venv, or colcon build)",
            ", ".join(sorted(missing)))
    return missing


def _known_fields(msg_type: type, values: dict[str, Any]) -> dict[str, Any]:
    missing = _missing_fields(msg_type, tuple(values))
    return {k: v for k, v in values.items() if k not in missing} if missing else values


def _split_ns(stamp_ns: int) -> tuple[int, int]:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return sec, nanosec


@dataclass
class FusionStatsValues:
    """The content of one FusionStats message as plain Python values.

    Field meanings are those of ``ivf_perception_msgs/msg/FusionStats.msg``; ``stamp_ns``/``frame_id``
    form the header (copied from the RGB input) and ``thermal_stamp_ns`` the thermal stamp of the pair.
    """

    stamp_ns: int
    frame_id: str
    variant: str = ""
    preset: str = ""
    device: str = ""
    precision: str = ""
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    end_to_end_ms: float = 0.0
    class_names: list[str] = field(default_factory=list)
    class_pixel_counts: list[int] = field(default_factory=list)
    received_rgb: int = 0
    received_thermal: int = 0
    paired: int = 0
    dropped_stale: int = 0
    unmatched_rgb: int = 0
    unmatched_thermal: int = 0
    pair_skew_ms: float = 0.0
    pair_skew_mean_ms: float = 0.0
    pair_skew_max_ms: float = 0.0
    thermal_stamp_ns: int = 0
    processed: int = 0
    failed: int = 0
    resets: int = 0
    guidance_source: str = "none"
    guidance_age_s: float = -1.0

    @classmethod
    def from_frame(cls, *, rgb_stamp_ns: int, thermal_stamp_ns: int, frame_id: str,
                   engine_info: dict[str, Any], class_names: Sequence[str], labels: np.ndarray | None,
                   timings_ms: dict[str, float], pairing: Any, end_to_end_ms: float,
                   processed: int, failed: int, resets: int, guidance_source: str = "none",
                   guidance_age_s: float = -1.0) -> FusionStatsValues:
        """Assemble the values of one processed pair.

        Args:
            engine_info: ``Engine.describe()`` (variant, preset, device, precision).
            class_names: the engine's class table; pixel counts have one entry per class.
            labels: the ``(H, W)`` uint8 class ids, or None for fusion-only models (no counts).
            timings_ms: ``EngineResult.timings_ms``.
            pairing: a ``sync.PairingStats`` (counters since activation).
            guidance_source, guidance_age_s: ``EngineResult.guidance``'s source and age.
        """
        counts: list[int] = []
        if labels is not None:
            counts = class_pixel_counts(labels, len(class_names))
        return cls(
            stamp_ns=int(rgb_stamp_ns), frame_id=str(frame_id),
            variant=str(engine_info.get("variant", "")), preset=str(engine_info.get("preset", "")),
            device=str(engine_info.get("device", "")), precision=str(engine_info.get("precision", "")),
            preprocess_ms=float(timings_ms.get("preprocess", 0.0)),
            inference_ms=float(timings_ms.get("inference", 0.0)),
            postprocess_ms=float(timings_ms.get("postprocess", 0.0)),
            end_to_end_ms=float(end_to_end_ms),
            class_names=[str(n) for n in class_names], class_pixel_counts=counts,
            received_rgb=pairing.received["rgb"], received_thermal=pairing.received["thermal"],
            paired=pairing.paired, dropped_stale=pairing.dropped_stale,
            unmatched_rgb=pairing.unmatched["rgb"], unmatched_thermal=pairing.unmatched["thermal"],
            pair_skew_ms=abs(int(thermal_stamp_ns) - int(rgb_stamp_ns)) / 1e6,
            pair_skew_mean_ms=pairing.skew_mean_ms, pair_skew_max_ms=pairing.skew_max_ms,
            thermal_stamp_ns=int(thermal_stamp_ns), processed=int(processed), failed=int(failed),
            resets=int(resets), guidance_source=str(guidance_source), guidance_age_s=float(guidance_age_s),
        )

    def _plain_fields(self) -> dict[str, Any]:
        # shallow on purpose: dataclasses.asdict deep-copies every list, per frame, for nothing
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _HEADER_FIELDS}

    def to_rclpy(self) -> Any:
        """Build the rclpy message (needs the built interface package)."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        msg_type = rclpy_fusion_stats_type()
        sec, nanosec = _split_ns(self.stamp_ns)
        th_sec, th_nanosec = _split_ns(self.thermal_stamp_ns)
        msg = msg_type(**_known_fields(msg_type, self._plain_fields()))
        msg.header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=self.frame_id)
        msg.thermal_stamp = Time(sec=th_sec, nanosec=th_nanosec)
        return msg

    def to_rosbags(self, typestore: Any) -> Any:
        """Build the rosbags message of ``typestore`` (FusionStats is registered on demand)."""
        msg_type = register_fusion_stats(typestore)
        header_cls = typestore.types["std_msgs/msg/Header"]
        time_cls = typestore.types["builtin_interfaces/msg/Time"]
        sec, nanosec = _split_ns(self.stamp_ns)
        th_sec, th_nanosec = _split_ns(self.thermal_stamp_ns)
        values = self._plain_fields()
        values["class_pixel_counts"] = np.asarray(values["class_pixel_counts"], dtype=np.uint32)
        return msg_type(
            header=header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=self.frame_id),
            thermal_stamp=time_cls(sec=th_sec, nanosec=th_nanosec),
            **values,
        )
