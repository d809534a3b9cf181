"""``ivf-perception generate``: labelled synthetic thermal/RGB scenes for tests, demos and training.

Writes the generic folder layout (``vi/``, ``ir/``, ``labels/``, ``index.json``) and/or a
rosbag2 (MCAP or sqlite3) with RGB, thermal and label topics stamped at ``--fps``.
The same ``--seed`` and ``--start`` always produce the same scenes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ivf_perception.cli._common import parse_size, user_errors
from ivf_perception.scenes import VARIETY, SceneConfig, write_scene_bag, write_scene_folder

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
    v = p.add_argument_group("variety (all off by default; see ivf_perception.scenes.SceneConfig)")
    v.add_argument("--variety", action="store_true",
                   help="turn on every option below at a moderate amount ("
                        + ", ".join(f"{k}={val:g}" for k, val in VARIETY.items()) + "); explicit options win")
    v.add_argument("--night-glare", type=float, default=None, help="halo strength around night lights (0 = off)")
    v.add_argument("--thermal-crossover", type=float, default=None,
                   help="0..1: pull objects' temperature toward the ground's (0 = off)")
    v.add_argument("--vignetting", type=float, default=None, help="0..1: RGB corner darkening (0 = off)")
    v.add_argument("--misregistration-jitter", type=float, default=None,
                   help="per-scene random extra thermal shift up to this many pixels (0 = off)")
    v.add_argument("--rgb-noise", type=float, default=None, help="RGB noise std by day, 8-bit levels (default 2)")
    v.add_argument("--night-rgb-noise", type=float, default=None,
                   help="RGB noise std by night, 8-bit levels (default 6)")
    v.add_argument("--thermal-noise", type=float, default=None, help="thermal temporal noise std, counts (default 3)")
    v.add_argument("--thermal-fpn", type=float, default=None, help="thermal column pattern std, counts (default 6)")
    p.add_argument("--thermal-encoding", choices=["mono8", "mono16"], default="mono8", help="bag only")
    p.add_argument("--fps", type=float, default=10.0, help="bag only")
    return p


_OPTIONS = {"night_glare": "night_glare", "thermal_crossover": "thermal_crossover", "vignetting": "vignetting",
            "misregistration_jitter": "misregistration_jitter_px", "rgb_noise": "rgb_noise_std",
            "night_rgb_noise": "night_rgb_noise_std", "thermal_noise": "thermal_noise_std",
            "thermal_fpn": "thermal_fpn_std"}
"""argparse destination -> SceneConfig field, for the options that are only passed when given."""


def scene_options(args: argparse.Namespace) -> dict[str, float]:
    """SceneConfig fields from ``--variety`` and the explicit options (which override it)."""
    values: dict[str, float] = dict(VARIETY) if args.variety else {}
    for dest, field in _OPTIONS.items():
        if getattr(args, dest) is not None:
            values[field] = getattr(args, dest)
    return values


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
                         thermal_misregistration_px=args.misregistration, **scene_options(args))
    if args.out:
        path = write_scene_folder(args.out, args.count, config, start=args.start)
        print(f"wrote {args.count} scenes to {path}")
    if args.bag:
        path = write_scene_bag(args.bag, args.count, config, fps=args.fps, storage=args.storage,
                               thermal_encoding=args.thermal_encoding, start=args.start)
        print(f"wrote {args.count} frames per topic to {path}")
    return 0
