"""``ivf-perception compare``: two variants or weight files on the same bag, side by side.

Usage::

    ivf-perception compare BAG --out DIR --a-variant V [--a-weights W] --b-variant V [--b-weights W]
        [--device D --precision P --backend B | --a-backend B --b-backend B]
        [replay options: topics, --params-file, --labels, --max-frames ...]

Replays BAG with engine A into ``DIR/a`` and engine B into ``DIR/b`` (each a full replay
output), then writes ``DIR/compare.md``, ``DIR/compare.html`` and ``DIR/compare.json``: every
metric (mIoU, per-class IoU, fusion metrics overall/day/night, latency, throughput) for A and B
with the difference and the better side. Weights default as for ``replay``: ``default`` (the
bundled weights) for s4fusion; another variant needs a weights file, or ``none`` to opt in to
random initialisation. ``--{a,b}-guidance-mode``/``--{a,b}-guidance-cache`` give a guided model
(tesg) its guidance per side, e.g. the same TeSG weights with ``fallback`` against ``cache``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import (
    add_backend_arguments,
    add_threads_argument,
    engine_from_args,
    setup_logging,
    user_errors,
)
from ivf_perception.cli.replay import add_bag_arguments, node_params_from_args, weights_label
from ivf_perception.engine import Engine
from ivf_perception.engine.config import GUIDANCE_MODE_NAMES
from ivf_perception.replay.compare import run_compare
from ivf_perception.replay.metrics import NIGHT_LUMA_THRESHOLD
from ivf_perception.replay.runner import ReplayOptions

__all__ = ["build_parser", "main"]

_PROG = "ivf-perception compare"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 folder or .mcap/.db3 file")
    p.add_argument("--out", type=Path, required=True, help="output folder (a/, b/, compare.*)")
    for side in ("a", "b"):
        g = p.add_argument_group(f"engine {side.upper()}")
        g.add_argument(f"--{side}-variant", default=None, help="model family (default: from the weights; s4fusion)")
        g.add_argument(f"--{side}-weights", default=None, help="weights .safetensors, 'default' or 'none'")
        g.add_argument(f"--{side}-preset", default=None, help="size preset when no weights are used")
        g.add_argument(f"--{side}-backend", default=None, help="inference backend of this side (default: --backend)")
        g.add_argument(f"--{side}-guidance-mode", default=None, choices=list(GUIDANCE_MODE_NAMES),
                       help="guided models (tesg): fallback (default), cache or async guidance of this side")
        g.add_argument(f"--{side}-guidance-cache", default=None, help="guidance cache folder of this side")
    g = p.add_argument_group("both engines")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    g.add_argument("--batch-size", type=int, default=1, help="pairs per inference call")
    add_threads_argument(g)
    add_backend_arguments(g)
    add_bag_arguments(p)
    e = p.add_argument_group("evaluation")
    e.add_argument("--labels", type=Path, default=None, help="ground-truth label folder (as for replay)")
    e.add_argument("--no-fusion-metrics", action="store_true", help="skip the per-frame fusion metrics")
    e.add_argument("--night-threshold", type=float, default=NIGHT_LUMA_THRESHOLD, help="day/night mean-luma threshold")
    return p


def _side(args: argparse.Namespace, side: str) -> argparse.Namespace:
    return argparse.Namespace(variant=getattr(args, f"{side}_variant"), weights=getattr(args, f"{side}_weights"),
                              preset=getattr(args, f"{side}_preset"), device=args.device, precision=args.precision,
                              threads=args.threads, backend=getattr(args, f"{side}_backend") or args.backend,
                              backend_cache_dir=args.backend_cache_dir, force_rebuild=args.force_rebuild,
                              scan_backend=args.scan_backend,
                              guidance_mode=getattr(args, f"{side}_guidance_mode"),
                              guidance_cache=getattr(args, f"{side}_guidance_cache"), guidance_max_age_s=None)


@user_errors(_PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    params = node_params_from_args(args)

    def builder(side: str) -> tuple[Engine, str]:
        side_args = _side(args, side)
        engine = engine_from_args(side_args, params.applied)
        return engine, weights_label(side_args, engine)

    options = ReplayOptions(
        bag=args.bag, out=args.out, rgb_topic=args.rgb_topic, thermal_topic=args.thermal_topic,
        label_topic=args.label_topic, labels_dir=args.labels, params=params, overwrite=args.overwrite,
        max_frames=args.max_frames, fusion_metrics=not args.no_fusion_metrics, night_threshold=args.night_threshold,
        distro=args.distro, batch_size=args.batch_size, progress=not args.no_progress)
    result = run_compare(options, lambda: builder("a"), lambda: builder("b"))
    if not result.rows:
        print(f"{_PROG}: interrupted during A; its partial report is in {args.out / 'a'}", file=sys.stderr)
        return result.exit_code
    width = max(len(r["metric"]) for r in result.rows)
    print(f"{'metric':<{width}}  {'A':>10}  {'B':>10}  {'B-A':>10}  better")
    for r in result.rows:
        cells = [f"{v:>10.4f}" if v is not None else f"{'n/a':>10}" for v in (r["a"], r["b"], r["diff"])]
        print(f"{r['metric']:<{width}}  " + "  ".join(cells) + f"  {r['better'] or 'n/a'}")
    print("wrote " + ", ".join(str(f) for f in result.files))
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
