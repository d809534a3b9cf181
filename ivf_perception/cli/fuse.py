"""``ivf-perception fuse``: fuse a user's folders of thermal and visible images.

Writes ``OUT/fused/<stem>.png``, ``OUT/labels/<stem>.png`` (class ids) and
``OUT/overlay/<stem>.png``. Pairs are matched by file stem; unmatched and unreadable files
are listed, not fatal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ivf_perception.baselines import BASELINES
from ivf_perception.cli._common import add_engine_arguments, engine_from_args, setup_logging, user_errors
from ivf_perception.folder_fusion import FolderFusionSummary, fuse_folders, fuse_folders_baseline

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception fuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ir", required=True, help="folder of thermal images")
    p.add_argument("--vi", required=True, help="folder of visible images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlay-alpha", type=float, default=0.5)
    p.add_argument("--baseline", choices=BASELINES, default=None,
                   help="write the pixel-average or pixel-maximum fusion instead of running a model")
    add_engine_arguments(p)
    return p


@user_errors("ivf-perception fuse")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.baseline:
        summary = fuse_folders_baseline(args.ir, args.vi, Path(args.out) / "fused", args.baseline)
        print(f"wrote {len(summary.written)} pixel-{args.baseline} fusions -> {args.out}")
        _report_skipped(summary)
        return 0 if summary.written else 1
    engine = engine_from_args(args)
    bar = tqdm(total=None, unit="pair", desc="fuse", disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    summary = fuse_folders(engine, args.ir, args.vi, args.out, batch_size=args.batch_size,
                           overlay_alpha=args.overlay_alpha, progress=progress)
    bar.close()
    print(f"fused {len(summary.written)} pairs with {engine.variant}/{engine.preset} on {engine.device} "
          f"({summary.mean_latency_ms:.1f} ms/pair) -> {args.out}")
    _report_skipped(summary)
    return 0 if summary.written else 1


def _report_skipped(summary: FolderFusionSummary) -> None:
    if summary.missing_counterpart:
        print(f"skipped {len(summary.missing_counterpart)} without a counterpart: "
              + ", ".join(summary.missing_counterpart[:20]))
    for stem, reason in summary.failed.items():
        print(f"failed {stem}: {reason}", file=sys.stderr)
