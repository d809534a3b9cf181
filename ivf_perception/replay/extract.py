"""Extract the paired frames of a bag as a dataset folder the training package reads.

Why: recorded drives become training data. Frames are paired with the live node's policy
(:class:`~ivf_perception.io.bag_pairing.FrameStream`), so a dataset holds exactly the pairs the
robot would have fused. Layout (the generic one, read by ``ivf_training``'s ``FolderPairDataset``)::

    OUT/vi/NAME.png       RGB (8-bit)
    OUT/ir/NAME.png       thermal as recorded: 8-bit gray, 16-bit raw counts, or RGB false colour
    OUT/labels/NAME.png   class ids, when the bag has a label topic
    OUT/index.json        source bag and topics, pairing parameters, per-frame stamps; skipped frames

``NAME`` is the RGB header stamp in nanoseconds (zero-padded to 19 digits), so names are stable
across runs and pairing parameters, and label folders made from them match by stamp.

Resumable: files are written under a temporary name and renamed, so a file that exists is
complete; a second run over the same bag skips frames whose files exist and rewrites the index.
``index.json`` is rewritten every few frames and on Ctrl-C, always listing exactly the frames on
disk. Frames that cannot be decoded are skipped and listed in the index.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ivf_perception.engine.preprocess import prepare_rgb
from ivf_perception.io.bag_decode import decode_pair
from ivf_perception.io.bag_inputs import estimated_pairs, open_bag_inputs
from ivf_perception.io.bag_pairing import FramePair, FrameStream
from ivf_perception.io.errors import ImageDecodeError
from ivf_perception.io.extract_layout import EXTRACT_INDEX_FORMAT
from ivf_perception.io.image_codec import message_encoding
from ivf_perception.io.image_files import write_png

from .outputs import OutputExistsError, prepare_output_dir
from .params import NodeParams
from .report import write_json

__all__ = ["ExtractOptions", "ExtractResult", "extract_dataset"]

_log = logging.getLogger(__name__)
_OWNED = ("vi", "ir", "labels", "index.json")
_INDEX_EVERY = 25


@dataclass
class ExtractOptions:
    """What to extract and where (see :class:`~ivf_perception.replay.runner.ReplayOptions` for the shared fields)."""

    bag: Path
    out: Path
    rgb_topic: str | None = None
    thermal_topic: str | None = None
    label_topic: str | None = None
    params: NodeParams = field(default_factory=NodeParams)
    overwrite: bool = False
    max_frames: int | None = None
    distro: str = "kilted"
    progress: bool = True


@dataclass
class ExtractResult:
    """Outcome: ``written`` new frames, ``kept`` frames already on disk, ``skipped`` undecodable ones."""

    status: str
    written: int
    kept: int
    skipped: list[dict[str, Any]]
    index: Path
    read_lines: list[str]
    messages_read: int

    @property
    def frames(self) -> int:
        return self.written + self.kept

    @property
    def exit_code(self) -> int:
        """0 with frames on disk, 130 after Ctrl-C, 1 when nothing paired, 2 when nothing was read."""
        if self.status == "interrupted":
            return 130
        if self.frames:
            return 0
        return 1 if self.messages_read else 2


def _source(options: ExtractOptions, topics: Any, storage: str) -> dict[str, Any]:
    return {"bag": str(options.bag), "storage": storage,
            "topics": {"rgb": topics.rgb, "thermal": topics.thermal, "label": topics.label},
            "pairing": {"slop_s": options.params.slop_s, "queue_size": options.params.queue_size}}


def _previous_frames(options: ExtractOptions, source: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Frames of an earlier run into the same folder (resume), after checking it used the same source."""
    index = options.out / "index.json"
    if options.overwrite or not index.is_file():
        prepare_output_dir(options.out, _OWNED, options.overwrite)
        return {}
    try:
        previous = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputExistsError(f"{index} cannot be read ({exc}); pass --overwrite to start over") from exc
    before = {k: previous.get("source", {}).get(k) for k in ("topics", "pairing")}
    now = {k: source[k] for k in ("topics", "pairing")}
    if previous.get("format") != EXTRACT_INDEX_FORMAT or before != now:
        raise OutputExistsError(
            f"{options.out} holds an extraction with other topics or pairing ({before}); this run uses {now}. "
            "Pass --overwrite to start over, or choose another --out")
    return {f["name"]: f for f in previous.get("frames", [])
            if _files_exist(options.out, f["name"], f.get("has_labels"))}


def _files_exist(out: Path, name: str, labels: bool | None) -> bool:
    folders = ("vi", "ir", "labels") if labels else ("vi", "ir")
    return all((out / folder / f"{name}.png").is_file() for folder in folders)


def _write_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.partial.png")
    write_png(tmp, array)
    os.replace(tmp, path)


def _entry(pair: FramePair, thermal_encoding: str) -> dict[str, Any]:
    return {"name": pair.name, "rgb_stamp_ns": pair.rgb_stamp_ns, "thermal_stamp_ns": pair.thermal_stamp_ns,
            "skew_ms": pair.skew_ns / 1e6, "rgb_log_ns": pair.rgb_log_ns, "thermal_log_ns": pair.thermal_log_ns,
            "frame_id": pair.frame_id, "thermal_encoding": thermal_encoding, "has_labels": pair.label_msg is not None}


def extract_dataset(options: ExtractOptions) -> ExtractResult:
    """Write the pairs of ``options.bag`` into ``options.out`` (see the module docstring).

    Raises:
        BagError (and subclasses): the bag or its topics cannot be used.
        OutputExistsError: ``out`` holds something else (or an extraction with other settings)
            and ``overwrite`` is off.
    """
    reader, topics = open_bag_inputs(options.bag, options.distro, options.rgb_topic, options.thermal_topic,
                                     options.label_topic)
    try:
        source = _source(options, topics, reader.report.storage)
        frames = _previous_frames(options, source)
        for sub in ("vi", "ir") + (("labels",) if topics.label else ()):
            (options.out / sub).mkdir(parents=True, exist_ok=True)
            for leftover in (options.out / sub).glob(".*.partial.png"):  # from a run killed mid-write
                leftover.unlink()
        stream = FrameStream(reader, topics, options.params.config)
        skipped: list[dict[str, Any]] = []
        written = kept = 0
        status = "running"

        def save_index() -> None:
            write_json(options.out / "index.json", {
                "format": EXTRACT_INDEX_FORMAT, "source": source, "complete": status == "complete",
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "frames": sorted(frames.values(), key=lambda f: f["rgb_stamp_ns"]), "skipped": skipped,
                "pairing": stream.log.as_dict(), "read": {**reader.report.as_dict(), "lines": reader.report.lines()}})

        progress = tqdm(total=estimated_pairs(reader, topics, options.max_frames), unit="frame", desc="extract",
                        disable=not options.progress or None, file=sys.stderr, dynamic_ncols=True)
        try:
            for pair in stream:
                if options.max_frames is not None and written + kept >= options.max_frames:
                    break
                if pair.name in frames or _files_exist(options.out, pair.name, pair.label_msg is not None):
                    frames.setdefault(pair.name, _entry(pair, message_encoding(pair.thermal_msg) or ""))
                    kept += 1
                else:
                    try:
                        frame = decode_pair(pair)
                    except ImageDecodeError as exc:
                        skipped.append({"name": pair.name, "rgb_stamp_ns": pair.rgb_stamp_ns, "reason": str(exc)})
                        _log.warning("pair %s skipped: %s", pair.name, exc)
                        continue
                    if frame.labels is not None:
                        _write_atomic(options.out / "labels" / f"{pair.name}.png", frame.labels)
                    _write_atomic(options.out / "ir" / f"{pair.name}.png", frame.thermal)
                    # 8-bit as the engine sees it (a 16-bit gray camera through the node's AGC)
                    vi = prepare_rgb(frame.rgb, options.params.config.agc)
                    _write_atomic(options.out / "vi" / f"{pair.name}.png", vi)
                    frames[pair.name] = _entry(pair, frame.thermal_encoding)
                    written += 1
                    if written % _INDEX_EVERY == 0:
                        save_index()
                progress.update(1)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            _log.warning("interrupted; the index lists the %d frame(s) on disk, run again to resume", len(frames))
        finally:
            progress.close()
            save_index()
    finally:
        reader.close()
    if status == "complete" and not frames:
        status = "no pairs"
    return ExtractResult(status, written, kept, skipped, options.out / "index.json", reader.report.lines(),
                         reader.report.total_read)
