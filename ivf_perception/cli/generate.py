"""``ivf-perception generate``: labelled synthetic thermal/RGB scenes for tests, demos and training.

Writes the generic folder layout (``vi/``, ``ir/``, ``labels/``, ``index.json``) and/or a
rosbag2 (MCAP or sqlite3) with RGB, thermal and label topics stamped at ``--fps``.
The same ``--seed`` and ``--start`` always produce the same scenes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ivf_perception.cli._common import parse_size, user_errors
from ivf_perception.scenes import SceneConfig, write_scene_bag, write_scene_folder

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder dataset to write (vi/, ir/, labels/, index.json)")
    p.add_argument("--bag", help="rosbag2 directory to write")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--start", type=int, default=0, help="index of the first scene")
    p.add_argument("--size", type=parse_size, default=(240, 320), help="HxW, default 240x320")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--night", choices=["random", "day", "night"], default="random")
    p.add_argument("--misregistration", type=float, default=0.0, help="thermal shift in pixels")
    p.add_argument("--thermal-encoding", choices=["mono8", "mono16"], default="mono8", help="bag only")
    p.add_argument("--fps", type=float, default=10.0, help="bag only")
    return p


@user_errors("ivf-perception generate")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out and not args.bag:
        parser.error("give --out and/or --bag")
    if args.count < 1:
        parser.error("--count must be >= 1")
    night = {"random": None, "day": False, "night": True}[args.night]
    config = SceneConfig(height=args.size[0], width=args.size[1], night=night, seed=args.seed,
                         thermal_misregistration_px=args.misregistration)
    if args.out:
        path = write_scene_folder(args.out, args.count, config, start=args.start)
        print(f"wrote {args.count} scenes to {path}")
    if args.bag:
        path = write_scene_bag(args.bag, args.count, config, fps=args.fps, storage=args.storage,
                               thermal_encoding=args.thermal_encoding, start=args.start)
        print(f"wrote {args.count} frames per topic to {path}")
    return 0
