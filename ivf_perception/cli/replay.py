"""``ivf-perception replay``: replay a rosbag2 through the engine, write an output bag and a report.

Usage::

    ivf-perception replay BAG --out DIR [--variant V --weights W] [--params-file node.yaml]
        [--rgb-topic T --thermal-topic T --label-topic T | --labels DIR] [--png] [--overwrite]
        [--max-frames N] [--copy-inputs] [--no-fusion-metrics]
    ivf-perception replay --bench [BAG ...] [--bench-frames N] [--bench-sizes 240x320,480x640]

BAG is a rosbag2 folder (MCAP or SQLite3, any ROS 2 distribution) or a single .mcap/.db3 file.
Image and CompressedImage topics are detected by name and encoding unless given. Frames are paired exactly as the
live node pairs them (its slop and queue size from ``--params-file``), inferred, and written to
``DIR/bag`` (MCAP: fused rgb8, labels mono8, overlay rgb8, FusionStats; input header stamps
kept), with ``DIR/report.html``, ``DIR/report.md`` and ``DIR/metrics.json``.

A damaged bag is read as far as possible (what was lost is reported). Ctrl-C stops early and
still leaves a readable output bag and a partial report. Exit codes: 0 frames processed, 1 no
pair formed, 2 nothing could be read or bad arguments, 130 interrupted.

``--bench`` measures replay throughput against the bare engine on the same frames (generated
320x240 and 640x480 bags unless bags are given) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import add_engine_arguments, engine_from_args, parse_size, setup_logging, user_errors
from ivf_perception.engine import Engine
from ivf_perception.replay.bench import bench_replay, format_bench_table, generate_bench_bags
from ivf_perception.replay.metrics import NIGHT_LUMA_THRESHOLD
from ivf_perception.replay.params import NodeParams, load_node_params
from ivf_perception.replay.runner import ReplayOptions, ReplayResult, run_replay
from ivf_perception.replay.writing import DEFAULT_NAMESPACE

__all__ = ["build_parser", "main", "add_bag_arguments", "node_params_from_args", "weights_label"]

_PROG = "ivf-perception replay"


def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """Input topics, pairing parameters and typestore: shared by replay, compare and extract."""
    g = parser.add_argument_group("bag input and pairing")
    g.add_argument("--rgb-topic", default=None, help="RGB Image topic (default: detected)")
    g.add_argument("--thermal-topic", default=None, help="thermal Image topic (default: detected)")
    g.add_argument("--label-topic", default=None, help="ground-truth label Image topic (default: detected if present)")
    g.add_argument("--params-file", type=Path, default=None,
                   help="the live node's ROS 2 params YAML: pairing (slop_s, queue_size, time_jump_threshold_s), "
                        "thermal AGC, homography, class names/palette and overlay_alpha are taken from it")
    g.add_argument("--node-name", default=None, help="node entry of --params-file to use when it holds several")
    g.add_argument("--slop", type=float, default=None, help="override the pairing slop in seconds")
    g.add_argument("--queue-size", type=int, default=None, help="override the pairing queue size")
    g.add_argument("--distro", default="kilted",
                   help="typestore for bags that store no message definitions (e.g. humble sqlite3 bags)")
    g.add_argument("--max-frames", type=int, default=None, help="stop after N pairs")
    g.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def node_params_from_args(args: argparse.Namespace) -> NodeParams:
    return load_node_params(args.params_file, args.node_name, slop_s=args.slop, queue_size=args.queue_size)


def weights_label(args: argparse.Namespace, engine: Engine) -> str:
    """How the weights were chosen, for reports (a file path, the bundled default, or none)."""
    if engine.info is None:
        return "none (random initialisation)"
    return str(engine.weights_path) if args.weights in (None, "default") else str(args.weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", nargs="*", type=Path, help="rosbag2 folder or .mcap/.db3 file (several only with --bench)")
    p.add_argument("--out", type=Path, default=None, help="output folder (required unless --bench)")
    add_bag_arguments(p)
    g = p.add_argument_group("evaluation and outputs")
    g.add_argument("--labels", type=Path, default=None,
                   help="ground-truth label folder, matched by stamp (index.json or stamp file names) or order")
    g.add_argument("--png", action="store_true", help="also write png/fused, png/labels, png/overlay")
    g.add_argument("--copy-inputs", action="store_true", help="copy the input image topics into the output bag")
    g.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=f"output topic prefix (default {DEFAULT_NAMESPACE})")
    g.add_argument("--no-fusion-metrics", action="store_true",
                   help="skip the per-frame fusion metrics (about as costly as a small model's inference)")
    g.add_argument("--night-threshold", type=float, default=NIGHT_LUMA_THRESHOLD,
                   help="night when the RGB image's mean BT.601 luma is below this "
                        f"(0-255, default {NIGHT_LUMA_THRESHOLD:g})")
    g.add_argument("--thumbnails", type=int, default=3, help="best and worst frames shown in the report (default 3)")
    b = p.add_argument_group("benchmark")
    b.add_argument("--bench", action="store_true", help="measure replay overhead against the bare engine")
    b.add_argument("--bench-frames", type=int, default=20, help="frames per benchmark bag (default 20)")
    b.add_argument("--bench-sizes", default="240x320,480x640",
                   help="HxW of the generated benchmark bags, comma-separated (when no BAG is given)")
    add_engine_arguments(p)
    return p


def _print_result(result: ReplayResult) -> None:
    s = result.summary
    for line in result.read_lines:
        print(f"{_PROG}: warning: {line}", file=sys.stderr)
    if s["skipped_frames"]:
        print(f"{_PROG}: warning: {len(s['skipped_frames'])} pair(s) could not be decoded and were skipped "
              "(listed in the report)", file=sys.stderr)
    print(f"{result.status}: {result.frames} frame(s) from {s['bag']['path']}")
    seg = s.get("segmentation") or {}
    if "all" in seg and seg["all"]["mIoU"] is not None:
        print(f"  mIoU {seg['all']['mIoU']:.4f}" + "".join(
            f", {k} {seg[k]['mIoU']:.4f}" for k in ("day", "night") if k in seg and seg[k]["mIoU"] is not None))
    fusion = (s.get("fusion") or {}).get("all")
    if fusion:
        print("  " + ", ".join(f"{k} {fusion[k]:.3f}" for k in ("EN", "MI", "VIF", "Qabf", "SSIM")))
    thr, lat = s["throughput"], s["latency_ms"].get("pipeline") or {}
    if lat:
        print(f"  {thr['fps_pipeline']:.2f} frames/s (pipeline), {thr['fps_engine']:.2f} (engine); "
              f"latency p50/p95/p99 {lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms")
    p = s["pairing"]
    print(f"  pairs {p['paired']}, unmatched rgb/thermal {p['unmatched_rgb']}/{p['unmatched_thermal']}, "
          f"|skew| mean {p['skew_mean_ms']:.2f} ms")
    print(f"wrote {result.out / 'bag'}, " + ", ".join(str(f) for f in result.files))


def _bench(args: argparse.Namespace) -> int:
    params = node_params_from_args(args)
    engine = engine_from_args(args, params.applied)
    with tempfile.TemporaryDirectory(prefix="ivf-bench-replay-") as tmp:
        bags = list(args.bag) or generate_bench_bags(
            Path(tmp), [parse_size(s) for s in args.bench_sizes.split(",")], args.bench_frames)
        rows = [bench_replay(bag, engine, Path(tmp) / f"out{i}", frames=args.bench_frames, params=params)
                for i, bag in enumerate(bags)]
    d = rows[0]["engine"]
    print(f"replay overhead benchmark: {d['variant']}/{d['preset']} on {d['device']} ({d['precision']}), "
          f"weights {weights_label(args, engine)}")
    print(format_bench_table(rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_replay.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out / 'bench_replay.json'}")
    return 0


@user_errors(_PROG)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.bench:
        return _bench(args)
    if len(args.bag) != 1 or args.out is None:
        parser.error("give exactly one BAG and --out DIR (several bags only with --bench)")
    params = node_params_from_args(args)
    engine = engine_from_args(args, params.applied)
    options = ReplayOptions(
        bag=args.bag[0], out=args.out, rgb_topic=args.rgb_topic, thermal_topic=args.thermal_topic,
        label_topic=args.label_topic, labels_dir=args.labels, params=params, png=args.png, overwrite=args.overwrite,
        max_frames=args.max_frames, fusion_metrics=not args.no_fusion_metrics, night_threshold=args.night_threshold,
        copy_inputs=args.copy_inputs, namespace=args.namespace, distro=args.distro, batch_size=args.batch_size,
        thumbnails=args.thumbnails, progress=not args.no_progress, weights=weights_label(args, engine))
    result = run_replay(options, engine)
    _print_result(result)
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
