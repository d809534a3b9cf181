"""Replay a bag through the engine: read → pair → decode → infer → write bag/PNGs → score → report.

Why one function with a small options object: the ``replay`` command, ``compare`` (twice, on the
same bag) and the replay benchmark all run exactly this path, so what is measured and compared
is what users run.

Robustness: a damaged bag is read as far as possible (:class:`~ivf_perception.io.bag_reader.BagReader`);
a pair that cannot be decoded or inferred is skipped and listed; Ctrl-C stops the loop, and the
output bag is still closed properly (readable) and the report written for the frames done,
marked partial.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ivf_perception.engine import Engine
from ivf_perception.io.bag_decode import DecodedFrame, decode_pair
from ivf_perception.io.bag_inputs import estimated_pairs, open_bag_inputs
from ivf_perception.io.bag_pairing import FramePair, FrameStream
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.io.bag_topics import TopicSelection
from ivf_perception.io.errors import DatasetError, ImageDecodeError
from ivf_perception.io.image_files import write_png
from ivf_perception.io.stats_msg import FusionStatsValues

from .interrupts import interrupts_deferred
from .labels import LabelFolder
from .metrics import NIGHT_LUMA_THRESHOLD, FrameResult, ReplayMetrics, latency_stats, mean_luma
from .outputs import prepare_output_dir
from .params import NodeParams
from .report import REPORT_FILES, write_report
from .thumbnails import ThumbnailKeeper
from .versions import software_versions
from .writing import DEFAULT_NAMESPACE, OutputBag

__all__ = ["ReplayOptions", "ReplayResult", "run_replay"]

_log = logging.getLogger(__name__)
OUTPUT_BAG = "bag"
PNG_DIR = "png"
EXIT_INTERRUPTED = 130


@dataclass
class ReplayOptions:
    """Everything a replay needs besides the engine.

    Attributes:
        bag: the input bag (rosbag2 folder or single file).
        out: the output folder (``bag/``, ``report.html``, ``report.md``, ``metrics.json``, ``png/``).
        rgb_topic, thermal_topic, label_topic: explicit topics (None: detect).
        labels_dir: ground-truth label folder (see :class:`~ivf_perception.replay.labels.LabelFolder`).
        params: the node's parameters (pairing, thermal AGC, registration, classes).
        png: also write fused/labels/overlay PNGs.
        overwrite: replace the outputs of an earlier run in ``out``.
        max_frames: stop after this many processed pairs.
        fusion_metrics: compute the fusion metrics per frame.
        night_threshold: day/night mean-luma threshold.
        copy_inputs: copy the input topics into the output bag.
        namespace: prefix of the output topics.
        distro: typestore for bags without stored message definitions.
        batch_size: pairs per engine call.
        thumbnails: best/worst frames shown in the report.
        progress: show a progress bar (on a terminal).
        weights: how the engine's weights were chosen, for the report.
    """

    bag: Path
    out: Path
    rgb_topic: str | None = None
    thermal_topic: str | None = None
    label_topic: str | None = None
    labels_dir: Path | None = None
    params: NodeParams = field(default_factory=NodeParams)
    png: bool = False
    overwrite: bool = False
    max_frames: int | None = None
    fusion_metrics: bool = True
    night_threshold: float = NIGHT_LUMA_THRESHOLD
    copy_inputs: bool = False
    namespace: str = DEFAULT_NAMESPACE
    distro: str = "kilted"
    batch_size: int = 1
    thumbnails: int = 3
    progress: bool = True
    weights: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"png": self.png, "max_frames": self.max_frames, "fusion_metrics": self.fusion_metrics,
                "night_threshold": self.night_threshold, "copy_inputs": self.copy_inputs, "namespace": self.namespace,
                "distro": self.distro, "batch_size": self.batch_size}


@dataclass
class ReplayResult:
    """Outcome of :func:`run_replay`: ``status`` is ``complete``, ``interrupted`` or ``no pairs``."""

    status: str
    frames: int
    summary: dict[str, Any]
    out: Path
    files: list[Path]
    read_lines: list[str]

    @property
    def exit_code(self) -> int:
        """0 when frames were processed, 130 after Ctrl-C, 1 when nothing paired, 2 when nothing was read."""
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        if self.frames:
            return 0
        return 2 if not sum(self.summary["bag"]["read"]["read"].values()) else 1


@dataclass
class _Pending:
    pair: FramePair
    frame: DecodedFrame
    timings: dict[str, float]
    released: float


class _Replay:
    """The state of one run (kept out of :func:`run_replay` so the loop stays readable)."""

    def __init__(self, options: ReplayOptions, engine: Engine, reader: BagReader, topics: TopicSelection) -> None:
        self.o = options
        self.engine = engine
        self.reader = reader
        self.topics = topics
        self.engine_info = engine.describe()
        self.class_names = list(engine.class_names) if engine.num_classes else []
        self.labels = LabelFolder(options.labels_dir) if options.labels_dir is not None else None
        self.metrics = ReplayMetrics(self.class_names, fusion=options.fusion_metrics,
                                     night_threshold=options.night_threshold, homography=engine.homography)
        self.thumbs = ThumbnailKeeper(options.thumbnails)
        self.skipped: list[dict[str, Any]] = []
        self.guidance_frames: dict[str, int] = {}  # frames per guidance source (guided models)
        self.processed = 0
        self.agc_resets = 0  # pairing resets (bag loops, time jumps) already passed on to the AGC
        self.warmup_s: float | None = None

    def ground_truth(self) -> str:
        if self.labels is not None:
            return f"label folder {self.labels.root} ({self.labels.mode}, {len(self.labels)} files)"
        if self.topics.label:
            return f"label topic {self.topics.label} in the bag"
        return "none"

    def skip(self, pair: FramePair, reason: str) -> None:
        self.skipped.append({"index": pair.index, "name": pair.name, "reason": reason})
        _log.warning("frame %d (%s) skipped: %s", pair.index, pair.name, reason)

    def run(self, writer: OutputBag, stream: FrameStream, progress: tqdm) -> str:
        batch: list[_Pending] = []
        mark = time.perf_counter()
        for pair in stream:
            read_ms = (time.perf_counter() - mark) * 1e3
            released = time.perf_counter()
            try:
                frame = decode_pair(pair)
            except ImageDecodeError as exc:
                self.skip(pair, f"cannot decode: {exc}")
                mark = time.perf_counter()
                continue
            if self.labels is not None:
                try:
                    frame.labels = self.labels.lookup(pair.rgb_stamp_ns, pair.index)
                except DatasetError as exc:  # e.g. a colour visualisation instead of class ids
                    self.metrics.label_errors += 1
                    _log.warning("frame %s: ground truth not used: %s", pair.name, exc)
            timings = {"read": read_ms, "decode": (time.perf_counter() - released) * 1e3}
            batch.append(_Pending(pair, frame, timings, released))
            if len(batch) >= self.o.batch_size:
                self.process(batch, writer, stream, progress)
                batch = []
            if self.o.max_frames is not None and self.processed + len(batch) >= self.o.max_frames:
                break
            mark = time.perf_counter()
        if batch:
            self.process(batch, writer, stream, progress)
        return "complete"

    def process(self, batch: list[_Pending], writer: OutputBag, stream: FrameStream, progress: tqdm) -> None:
        if self.warmup_s is None:  # like the node at configure: one-time allocations stay out of the latencies
            start = time.perf_counter()
            self.engine.warmup(*batch[0].frame.rgb.shape[:2])
            self.warmup_s = time.perf_counter() - start
        if stream.log.resets != self.agc_resets:  # as the node: the smoothed AGC starts again
            self.engine.reset_agc()
            self.agc_resets = stream.log.resets
        try:
            results = self.engine.infer_batch([p.frame.rgb for p in batch], [p.frame.thermal for p in batch],
                                              stamps_s=[p.pair.rgb_stamp_ns / 1e9 for p in batch])
        except ValueError as exc:  # InputError, ShapeError: this batch's images, not the replay, are at fault
            for p in batch:
                self.skip(p.pair, f"engine refused the input: {exc}")
            return
        for p, result in zip(batch, results):
            timings = dict(p.timings)
            timings.update({k: v / len(batch) for k, v in result.timings_ms.items()})  # a batch shares one call
            start = time.perf_counter()
            overlay = result.overlay(alpha=self.o.params.overlay_alpha)
            timings["overlay"] = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            stats = FusionStatsValues.from_frame(
                rgb_stamp_ns=p.pair.rgb_stamp_ns, thermal_stamp_ns=p.pair.thermal_stamp_ns, frame_id=p.pair.frame_id,
                engine_info=self.engine_info, class_names=self.class_names, labels=result.labels,
                timings_ms=timings, pairing=stream.pairer.stats,
                end_to_end_ms=(time.perf_counter() - p.released) * 1e3, processed=self.processed + 1,
                failed=len(self.skipped), resets=stream.log.resets,
                guidance_source=result.guidance.source, guidance_age_s=result.guidance.age_s)
            # one frame's messages, its count and its metrics go in together or not at all (Ctrl-C)
            with interrupts_deferred():
                writer.write_frame(p.pair, result.fused, result.labels, overlay, stats)
                if self.o.png:
                    self.write_pngs(p.pair.name, result.fused, result.labels, overlay)
                timings["write"] = (time.perf_counter() - start) * 1e3
                self.processed += 1
                source = result.guidance.source
                self.guidance_frames[source] = self.guidance_frames.get(source, 0) + 1
                brightness = mean_luma(result.rgb)
                frame_result = FrameResult(
                    index=p.pair.index, name=p.pair.name, rgb_stamp_ns=p.pair.rgb_stamp_ns,
                    thermal_stamp_ns=p.pair.thermal_stamp_ns, skew_ms=p.pair.skew_ns / 1e6, brightness=brightness,
                    is_night=brightness < self.o.night_threshold, timings_ms=timings)
                self.metrics.add(frame_result, result.rgb, p.frame.thermal, result.fused, result.labels, p.frame.labels)
                self.thumbs.offer(frame_result, result.rgb, p.frame.thermal, result.fused, overlay)
                progress.update(1)

    def write_pngs(self, name: str, fused: np.ndarray, labels: np.ndarray | None, overlay: np.ndarray | None) -> None:
        root = self.o.out / PNG_DIR
        write_png(root / "fused" / f"{name}.png", fused)
        if labels is not None:
            write_png(root / "labels" / f"{name}.png", labels)
        if overlay is not None:
            write_png(root / "overlay" / f"{name}.png", overlay)


def _skew_stats(skews_ns: list[int]) -> dict[str, float]:
    stats = latency_stats([abs(s) / 1e6 for s in skews_ns])
    return {f"abs_{k}": v for k, v in stats.items()}


def run_replay(options: ReplayOptions, engine: Engine) -> ReplayResult:
    """Replay ``options.bag`` through ``engine``; writes the output bag, PNGs and the report.

    Raises:
        BagError (and subclasses): the bag or its topics cannot be used at all.
        OutputExistsError: ``options.out`` holds files and ``overwrite`` is off.
        DatasetError: the ``--labels`` folder is unusable.
    """
    started = datetime.now(UTC).isoformat(timespec="seconds")
    reader, topics = open_bag_inputs(options.bag, options.distro, options.rgb_topic, options.thermal_topic,
                                     options.label_topic, detect_label=options.labels_dir is None)
    try:
        state = _Replay(options, engine, reader, topics)
        owned = (OUTPUT_BAG, PNG_DIR, *REPORT_FILES)
        prepare_output_dir(options.out, owned, options.overwrite)
        inputs = [t for t in (topics.rgb, topics.thermal, topics.label) if t]
        copy = {t: reader.topics[t] for t in inputs} if options.copy_inputs else None  # Image or CompressedImage
        writer = OutputBag(options.out / OUTPUT_BAG, options.namespace, copy_topics=copy)
        stream = FrameStream(reader, topics, options.params.config, on_record=writer.copy if copy else None)
        progress = tqdm(total=estimated_pairs(reader, topics, options.max_frames), unit="frame", desc="replay",
                        disable=not options.progress or None, file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            status = state.run(writer, stream, progress)
        except KeyboardInterrupt:
            status = "interrupted"
            _log.warning("interrupted after %d frame(s); closing the output bag and writing a partial report",
                         state.processed)
        finally:
            writer.close()
            progress.close()
        wall_s = time.perf_counter() - t0 - (state.warmup_s or 0.0)
    finally:
        reader.close()
    if status == "complete" and state.processed == 0:
        status = "no pairs"
    summary = _summary(options, state, stream, writer, status, started, wall_s)
    summary["throughput"]["warmup_s"] = state.warmup_s
    files = write_report(options.out, summary, state.thumbs.best, state.thumbs.worst)
    return ReplayResult(status, state.processed, summary, options.out, files, reader.report.lines())


def _summary(options: ReplayOptions, state: _Replay, stream: FrameStream, writer: OutputBag, status: str,
             started: str, wall_s: float) -> dict[str, Any]:
    reader = state.reader
    return {
        "status": status,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "bag": {"path": str(options.bag), "topics": dict(reader.topics), "message_counts": dict(reader.counts),
                "read": {**reader.report.as_dict(), "lines": reader.report.lines()}},
        "configuration": {
            "topics": state.topics.as_dict(), "ground_truth": state.ground_truth(), "engine": state.engine_info,
            "weights": options.weights, "pairing": options.params.as_dict(), "options": options.as_dict(),
            "output_topics": dict(writer.topics), "output_bag": str(options.out / OUTPUT_BAG)},
        "software": software_versions(),
        "pairing": {**stream.log.as_dict(), "skew_ms": _skew_stats(stream.log.skews_ns)},
        "skipped_frames": state.skipped,
        "guidance_frames": dict(sorted(state.guidance_frames.items())),
        **state.metrics.summary(wall_s),
    }
