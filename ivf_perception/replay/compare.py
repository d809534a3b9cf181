"""Two engines (variants or weight files) on the same bag, side by side, for choosing what to deploy.

Why replay twice instead of one loop with two engines: each side then gets its full replay output
(``a/`` and ``b/``: output bag, report, metrics.json) for a closer look, and timings of one
engine are not disturbed by the other's memory and caches. Both runs read the same bag with the
same pairing, so they see the same frames (checked). The comparison table gives A, B, B − A,
the relative change and which side is better for every metric (higher is better for fusion
metrics, IoU and throughput; lower for latency).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ivf_perception.engine import Engine
from ivf_perception.metrics import FUSION_METRIC_NAMES

from .outputs import prepare_output_dir
from .render import Block, Heading, Table, Text, to_html, to_markdown
from .report import write_json
from .runner import ReplayOptions, ReplayResult, run_replay

__all__ = ["run_compare", "comparison_rows", "CompareResult"]

COMPARE_FILES = ("compare.html", "compare.md", "compare.json")


@dataclasses.dataclass
class CompareResult:
    """Both replays and the comparison rows (``metric, a, b, diff, rel, better, higher_is_better``)."""

    a: ReplayResult
    b: ReplayResult
    rows: list[dict[str, Any]]
    files: list[Path]

    @property
    def exit_code(self) -> int:
        return max(self.a.exit_code, self.b.exit_code)


def _get(summary: dict[str, Any], *path: str) -> float | None:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def _metric_paths(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, tuple[str, ...], bool]]:
    """(row name, path into the summary, higher is better) for everything both summaries can hold."""
    rows: list[tuple[str, tuple[str, ...], bool]] = []
    for split in ("all", "day", "night"):
        if split in (a.get("segmentation") or {}) or split in (b.get("segmentation") or {}):
            rows.append((f"mIoU {split}", ("segmentation", split, "mIoU"), True))
    if "all" in (a.get("segmentation") or {}) or "all" in (b.get("segmentation") or {}):
        rows.append(("pixel accuracy all", ("segmentation", "all", "pixel_accuracy"), True))
        segmentation = a.get("segmentation") or b["segmentation"]  # one of them holds "all"
        names = list(segmentation["all"]["per_class_iou"])
        rows += [(f"IoU {n}", ("segmentation", "all", "per_class_iou", n), True) for n in names]
    for split in ("all", "day", "night"):
        if split in (a.get("fusion") or {}) or split in (b.get("fusion") or {}):
            rows += [(f"{m} {split}", ("fusion", split, m), True) for m in FUSION_METRIC_NAMES]
    for stage in ("pipeline", "inference"):
        rows += [(f"{stage} latency {q} (ms)", ("latency_ms", stage, q), False) for q in ("p50", "p95", "p99")]
    rows += [("throughput engine (frames/s)", ("throughput", "fps_engine"), True),
             ("throughput pipeline (frames/s)", ("throughput", "fps_pipeline"), True)]
    return rows


def comparison_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Every metric of two replay summaries with its difference and the better side."""
    out = []
    for name, path, higher in _metric_paths(a, b):
        va, vb = _get(a, *path), _get(b, *path)
        diff = None if va is None or vb is None else vb - va
        rel = None if diff is None or va is None or va == 0 else diff / abs(va)
        better = None if diff is None else "=" if abs(diff) <= 1e-12 else ("B" if (diff > 0) == higher else "A")
        out.append({"metric": name, "a": va, "b": vb, "diff": diff, "rel": rel, "better": better,
                    "higher_is_better": higher})
    return out


def _describe(result: ReplayResult) -> str:
    e = result.summary["configuration"]["engine"]
    w = result.summary["configuration"].get("weights") or "random initialisation"
    return f"{e['variant']}/{e['preset']} ({e['parameters']:,} parameters), weights {w}"


EngineBuilder = Callable[[], tuple[Engine, str | None]]


def run_compare(options: ReplayOptions, engine_a: EngineBuilder, engine_b: EngineBuilder) -> CompareResult:
    """Replay ``options.bag`` with engine A into ``out/a`` and engine B into ``out/b``, then compare.

    Args:
        options: replay options; ``out`` receives ``a/``, ``b/`` and ``compare.{md,html,json}``.
        engine_a, engine_b: build each engine when its turn comes (only one is in memory at a time) and
            say how its weights were chosen (for the reports).

    Raises:
        OutputExistsError: ``out`` holds files and ``overwrite`` is off.
        Whatever :func:`~ivf_perception.replay.runner.run_replay` raises.
    """
    out = Path(options.out)
    prepare_output_dir(out, ("a", "b", *COMPARE_FILES), options.overwrite)
    results = []
    for side, build in (("a", engine_a), ("b", engine_b)):
        engine, w = build()
        results.append(run_replay(dataclasses.replace(options, out=out / side, overwrite=True, weights=w), engine))
        engine.release()
        if results[-1].status == "interrupted":
            break
    if len(results) == 1:  # Ctrl-C during A: nothing to compare, A's partial report is written
        return CompareResult(results[0], results[0], [], [])
    ra, rb = results
    rows = comparison_rows(ra.summary, rb.summary)
    frames_a = [f["name"] for f in ra.summary["per_frame"]]
    frames_b = [f["name"] for f in rb.summary["per_frame"]]
    same = frames_a == frames_b
    blocks: list[Block] = [
        Text(f"Bag {options.bag}: A and B replayed the same {len(frames_a)} frame(s)." if same else
             f"Bag {options.bag}: A processed {len(frames_a)} and B {len(frames_b)} frame(s); the frame sets differ "
             "(skipped or interrupted frames), so the metrics are not over identical frames."),
        Table(["side", "engine", "status", "report"], [["A", _describe(ra), ra.status, "a/report.html"],
                                                       ["B", _describe(rb), rb.status, "b/report.html"]]),
        Heading("Metrics"),
        Text("Higher is better for fusion metrics, IoU and throughput, lower for latency; 'better' names the side."),
        Table(["metric", "A", "B", "B − A", "change", "better"],
              [[r["metric"], r["a"], r["b"], r["diff"], "n/a" if r["rel"] is None else f"{r['rel'] * 100:+.1f} %",
                r["better"] or "n/a"] for r in rows]),
    ]
    title = "ivf_perception compare: A vs B"
    files = [out / name for name in COMPARE_FILES]
    files[0].write_text(to_html(title, blocks))
    files[1].write_text(to_markdown(title, blocks))
    write_json(files[2], {"bag": str(options.bag), "same_frames": same,
                          "a": {"engine": _describe(ra), "status": ra.status},
                          "b": {"engine": _describe(rb), "status": rb.status}, "rows": rows})
    return CompareResult(ra, rb, rows, files)
