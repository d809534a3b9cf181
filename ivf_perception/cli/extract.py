"""``ivf-perception extract``: paired frames of a bag as a dataset folder for training.

Usage::

    ivf-perception extract BAG --out DIR [--rgb-topic T --thermal-topic T --label-topic T]
        [--params-file node.yaml] [--max-frames N] [--overwrite]

Writes ``DIR/vi/NAME.png`` (RGB), ``DIR/ir/NAME.png`` (thermal as recorded, 16-bit kept),
``DIR/labels/NAME.png`` (when the bag has a label topic) and ``DIR/index.json`` (source bag,
topics, pairing, per-frame stamps, skipped frames), NAME being the RGB header stamp in ns. Pairs
are formed exactly as the live node and ``replay`` form them. Running again over the same
folder resumes: frames already written are kept. ``ivf_training``'s ``FolderPairDataset``
reads the folder directly.

Exit codes: 0 frames on disk, 1 no pair formed, 2 nothing could be read or bad arguments,
130 interrupted (run again to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import setup_logging, user_errors
from ivf_perception.cli.replay import add_bag_arguments, node_params_from_args
from ivf_perception.replay.extract import ExtractOptions, extract_dataset

__all__ = ["build_parser", "main"]

_PROG = "ivf-perception extract"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 folder or .mcap/.db3 file")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write (or resume)")
    add_bag_arguments(p)
    return p


@user_errors(_PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    options = ExtractOptions(bag=args.bag, out=args.out, rgb_topic=args.rgb_topic, thermal_topic=args.thermal_topic,
                             label_topic=args.label_topic, params=node_params_from_args(args), overwrite=args.overwrite,
                             max_frames=args.max_frames, distro=args.distro, progress=not args.no_progress)
    result = extract_dataset(options)
    for line in result.read_lines:
        print(f"{_PROG}: warning: {line}", file=sys.stderr)
    for s in result.skipped[:20]:
        print(f"{_PROG}: warning: pair {s['name']} skipped: {s['reason']}", file=sys.stderr)
    if len(result.skipped) > 20:
        print(f"{_PROG}: warning: ... {len(result.skipped) - 20} more skipped pairs listed in {result.index}",
              file=sys.stderr)
    print(f"{result.status}: {result.written} frame(s) written, {result.kept} already present, "
          f"{len(result.skipped)} skipped; index {result.index}")
    return result.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
