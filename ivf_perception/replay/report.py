"""The replay report: ``metrics.json`` (everything), ``report.md`` and ``report.html``.

Why three files: ``metrics.json`` is for scripts and ``compare`` (it holds every per-frame
value); ``report.md`` reads in a terminal or a pull request; ``report.html`` is one
self-contained file for people, with the latency histogram, the pair-skew charts and
thumbnails of the best and worst frames. Both reports are rendered from the same blocks
(:mod:`~ivf_perception.replay.render`), so they cannot disagree. A partial run (Ctrl-C) gets the
same report, marked as partial.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

from ivf_perception.metrics import FUSION_METRIC_NAMES

from .metrics import PIPELINE_STAGES
from .plots import svg_histogram, svg_series
from .render import Block, Heading, Raw, Table, Text, fmt, md_escape, png_data_uri, to_html, to_markdown
from .thumbnails import Thumbnail

__all__ = ["write_report", "report_blocks", "write_json", "HEADLINE_FUSION"]

HEADLINE_FUSION = ("EN", "SD", "SF", "AG", "MI", "VIF", "Qabf", "SSIM")
REPORT_FILES = ("report.html", "report.md", "metrics.json")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON atomically (a reader never sees half a file, even after Ctrl-C)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _status_text(s: dict[str, Any]) -> str:
    status = s["status"]
    if status == "interrupted":
        return (f"PARTIAL: the replay was interrupted after {s['frames']} frame(s); everything below covers "
                "only those frames, and the output bag holds exactly them.")
    if status == "no pairs":
        if s["pairing"]["paired"]:
            return (f"{s['pairing']['paired']} pair(s) were formed but none could be processed: see Input "
                    "problems.")
        return "No RGB/thermal pair was formed: see the pairing section for why (slop, stamps, topics)."
    return f"Complete: {s['frames']} frame(s) processed."


def _headline(s: dict[str, Any]) -> list[Block]:
    rows: list[list[Any]] = [["frames", s["frames"]],
                             ["day / night frames", f"{s['day_night']['day']} / {s['day_night']['night']}"]]
    seg = s.get("segmentation") or {}
    if "all" in seg:
        rows.append(["mIoU (classes 1..K-1, whole set)", seg["all"]["mIoU"]])
        for split in ("day", "night"):
            if split in seg:
                rows.append([f"mIoU {split}", seg[split]["mIoU"]])
    fusion = s.get("fusion", {}).get("all")
    if fusion:
        rows += [[f"{k} (mean)", fusion[k]] for k in ("EN", "MI", "VIF", "Qabf", "SSIM")]
    thr = s["throughput"]
    rows += [["throughput, whole replay (frames/s)", thr["fps_wall"]],
             ["throughput, pipeline without metrics (frames/s)", thr["fps_pipeline"]],
             ["throughput, engine only (frames/s)", thr["fps_engine"]]]
    lat = s["latency_ms"].get("pipeline")
    if lat:
        rows.append(["pipeline latency p50 / p95 / p99 (ms)",
                     f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f}"])
    return [Heading("Headline"), Table(["", "value"], rows)]


def _fusion(s: dict[str, Any]) -> list[Block]:
    fusion = s.get("fusion") or {}
    if not fusion:
        return [Heading("Fusion metrics"), Text("Not computed (--no-fusion-metrics, or no frame was processed).")]
    counts = {"all": s["frames"], "day": s["day_night"]["day"], "night": s["day_night"]["night"]}
    rows = [[split, counts[split]] + [means[k] for k in FUSION_METRIC_NAMES] for split, means in fusion.items()]
    return [Heading("Fusion metrics"),
            Text("Means over frames of the eleven metrics as DESIGN §6 and eval-fusion compute them (CDDFuse "
                 f"conventions; A = thermal, B = RGB, F = fused). Day/night: {s['day_night']['rule']}."),
            Table(["split", "frames", *FUSION_METRIC_NAMES], rows)]


def _segmentation(s: dict[str, Any], ground_truth: str) -> list[Block]:
    seg = s.get("segmentation")
    if not seg:
        reason = "no ground truth was found" if s.get("ground_truth_frames", 0) == 0 else "the engine does not segment"
        return [Heading("Segmentation"), Text(f"Not scored: {reason} (a label topic in the bag, or --labels DIR).")]
    rows = [[split, v["frames"], v["mIoU"], v["mIoU_with_background"], v["background_IoU"], v["pixel_accuracy"]]
            for split, v in seg.items()]
    names = list(seg["all"]["per_class_iou"])
    per_class = [[name] + [seg[split]["per_class_iou"][name] for split in seg] for name in names]
    blocks: list[Block] = [
        Heading("Segmentation"),
        Text(f"Ground truth: {ground_truth}. IoU from one confusion matrix over all frames of a split (not a mean "
             "of per-frame IoUs); label 255 ignored; mIoU is over classes 1..K-1, class 0 reported separately."),
        Table(["split", "frames", "mIoU", "mIoU incl. class 0", "class 0 IoU", "pixel accuracy"], rows),
        Table(["class", *[f"IoU {split}" for split in seg]], per_class),
    ]
    if s.get("ground_truth_not_scored"):
        blocks.append(Text(f"{s['ground_truth_not_scored']} frame(s) had ground truth that could not be scored "
                           "(size or class ids); see per_frame notes in metrics.json."))
    return blocks


def _latency(s: dict[str, Any]) -> list[Block]:
    lat = s["latency_ms"]
    order = [st for st in (*PIPELINE_STAGES, "pipeline", "metrics") if st in lat and lat[st]]
    rows = [[st, lat[st]["mean"], lat[st]["p50"], lat[st]["p95"], lat[st]["p99"], lat[st]["max"]] for st in order]
    thr = s["throughput"]
    pipeline = [f["pipeline_ms"] for f in s.get("per_frame", [])]
    return [
        Heading("Latency and throughput"),
        Text("Per frame, milliseconds. read: bag reading, deserialisation and pairing since the previous frame; "
             "decode: Image messages to arrays; preprocess/inference/postprocess: the engine; overlay: class "
             "colours over RGB; write: encoding and writing the output bag (and PNGs); pipeline: their sum; "
             "metrics: scoring, not part of the pipeline. The engine's warm-up on the first frame is excluded."),
        Table(["stage", "mean", "p50", "p95", "p99", "max"], [[r[0], *[fmt(v, 2) for v in r[1:]]] for r in rows]),
        Table(["wall time (s)", "frames/s (wall)", "frames/s (pipeline)", "frames/s (engine)"],
              [[fmt(thr[k], 2) for k in ("wall_s", "fps_wall", "fps_pipeline", "fps_engine")]]),
        Raw(svg_histogram(pipeline, "Pipeline latency per frame", "ms"), classes=["charts"]),
    ]


def _pairing(s: dict[str, Any], slop_s: float) -> list[Block]:
    p = s["pairing"]
    rows = [["received (rgb / thermal)", f"{p['received_rgb']} / {p['received_thermal']}"],
            ["paired", p["paired"]],
            ["unmatched (rgb / thermal)", f"{p['unmatched_rgb']} / {p['unmatched_thermal']}"],
            ["out of order (rgb / thermal)", f"{p['out_of_order_rgb']} / {p['out_of_order_thermal']}"],
            [f"pairing resets (stamps jumped back > {s['configuration']['pairing']['time_jump_threshold_s']:g} s)",
             p["resets"]],
            ["|skew| mean / max (ms)", f"{p['skew_mean_ms']:.2f} / {p['skew_max_ms']:.2f}"],
            ["labels matched / unmatched", f"{p['labels_matched']} / {p['labels_unmatched']}"]]
    per_frame = s.get("per_frame", [])
    skews = [f["skew_ms"] for f in per_frame]
    t0 = per_frame[0]["rgb_stamp_ns"] if per_frame else 0
    times = [(f["rgb_stamp_ns"] - t0) / 1e9 for f in per_frame]
    slop_ms = slop_s * 1e3
    charts = (svg_histogram(skews, "Pair skew (thermal − RGB stamp)", "ms", x_range=(-slop_ms, slop_ms))
              + svg_series(times, skews, "Pair skew over time", "s since first pair", "ms", band=(-slop_ms, slop_ms)))
    blocks: list[Block] = [
        Heading("Pairing"),
        Text(f"Approximate-time pairing with the live node's policy (ivf_perception.sync): slop {slop_s * 1e3:g} ms, "
             f"queue size {s['configuration']['pairing']['queue_size']}, messages in record-time order."),
        Table(["", "value"], rows),
        Raw(charts, classes=["charts"]),
    ]
    if p["time_jumps"]:
        blocks.append(Text("Time jumps: " + "; ".join(p["time_jumps"])))
    return blocks


def _problems(s: dict[str, Any]) -> list[Block]:
    read = s["bag"]["read"]
    lines = list(read.get("lines", []))
    skipped = s.get("skipped_frames", [])
    if not lines and not skipped:
        return [Heading("Input problems"), Text("None: the bag was read completely and every pair was decoded.")]
    blocks: list[Block] = [Heading("Input problems")]
    if lines:
        blocks.append(Table(["bag reading"], [[line] for line in lines]))
    if skipped:
        blocks.append(Table(["skipped frame", "rgb stamp (ns)", "reason"],
                            [[f["index"], f["name"], f["reason"]] for f in skipped[:50]],
                            caption=f"{len(skipped)} pair(s) could not be decoded and were skipped"))
    return blocks


def _frames_html(title: str, thumbs: list[Thumbnail]) -> str:
    cells = []
    for t in thumbs:
        cells.append(f"<tr><td>{escape(t.name)}<br>#{t.index}<br>{t.score_name} {t.score:.3f}</td>"
                     + "".join(f'<td><img src="{png_data_uri(img)}" alt="{k}"></td>' for k, img in t.images.items())
                     + "</tr>")
    head = "<tr><th>frame</th><th>RGB</th><th>thermal</th><th>fused</th><th>overlay</th></tr>"
    return f"<table class='frames'><caption>{escape(title)}</caption>{head}{''.join(cells)}</table>"


_SCORE_MEANING = {"mIoU": "per-frame mIoU against the ground truth",
                  "Qabf": "edge information transferred from the sources into the fused image"}


def _thumbnails(best: list[Thumbnail], worst: list[Thumbnail]) -> list[Block]:
    if not best:
        return [Heading("Best and worst frames"),
                Text("No frame could be ranked (no ground truth and no fusion metrics).")]
    score = best[0].score_name
    md = "\n".join(["- best: " + ", ".join(f"{md_escape(t.name)} ({score} {t.score:.3f})" for t in best),
                    "- worst: " + ", ".join(f"{md_escape(t.name)} ({score} {t.score:.3f})" for t in worst),
                    "", "Thumbnails (RGB, thermal, fused, overlay) are in report.html."])
    html = _frames_html(f"Best {len(best)} by {score}", best) + _frames_html(f"Worst {len(worst)} by {score}", worst)
    return [Heading("Best and worst frames"),
            Text(f"Ranked by each frame's own {score} ({_SCORE_MEANING[score]})."),
            Raw(html, markdown=md)]


def _configuration(s: dict[str, Any]) -> list[Block]:
    cfg = s["configuration"]
    engine = cfg["engine"]
    rows = [["bag", s["bag"]["path"]], ["storage", s["bag"]["read"].get("storage")],
            ["rgb topic", f"{cfg['topics']['rgb']} ({cfg['topics']['how'].get('rgb')})"],
            ["thermal topic", f"{cfg['topics']['thermal']} ({cfg['topics']['how'].get('thermal')})"],
            ["label topic", f"{cfg['topics']['label']} ({cfg['topics']['how'].get('label')})"],
            ["ground truth", cfg["ground_truth"]],
            ["engine", f"{engine['variant']}/{engine['preset']} on {engine['device']} ({engine['precision']}), "
                       f"{engine['parameters']:,} parameters"],
            ["weights", cfg.get("weights") or "random initialisation"],
            ["pairing", f"slop {cfg['pairing']['slop_s']} s, queue {cfg['pairing']['queue_size']} "
                        f"({cfg['pairing']['source']})"],
            ["homography", cfg["pairing"]["homography"] or "none"],
            ["thermal AGC percentiles", cfg["pairing"]["agc_pct"]]]
    guidance = {k: v for k, v in s.get("guidance_frames", {}).items() if k != "none"}
    if guidance:  # a guided model (TeSG): which frames ran with guidance
        mode = engine.get("guidance_mode", "fallback")
        rows.append(["guidance", f"{mode}: " + ", ".join(f"{n} frames {k}" for k, n in guidance.items())])
    rows += [[f"option {k}", v] for k, v in cfg["options"].items()]
    rows += [[f"output topic {k}", v] for k, v in cfg["output_topics"].items()]
    versions = [[k, v] for k, v in s["software"].items()]
    return [Heading("Configuration"), Table(["", "value"], rows), Heading("Software"), Table(["", "version"], versions),
            Text(f"Started {s['started']}, finished {s['finished']}.")]


def report_blocks(summary: dict[str, Any], best: list[Thumbnail], worst: list[Thumbnail]) -> list[Block]:
    """The report's content, in order."""
    cfg = summary["configuration"]
    return [Text(_status_text(summary)), *_headline(summary), *_fusion(summary),
            *_segmentation(summary, cfg["ground_truth"]), *_latency(summary),
            *_pairing(summary, cfg["pairing"]["slop_s"]), *_problems(summary),
            *_thumbnails(best, worst), *_configuration(summary)]


def write_report(out_dir: Path, summary: dict[str, Any], best: list[Thumbnail], worst: list[Thumbnail]) -> list[Path]:
    """Write ``metrics.json``, ``report.md`` and ``report.html`` into ``out_dir``; returns their paths."""
    title = f"ivf_perception replay: {Path(summary['bag']['path']).name}"
    blocks = report_blocks(summary, best, worst)
    paths = [out_dir / name for name in REPORT_FILES]
    paths[0].write_text(to_html(title, blocks))
    paths[1].write_text(to_markdown(title, blocks))
    write_json(paths[2], summary)
    return paths
