"""``ivf-perception`` entry point: dispatches to one module per subcommand.

Each subcommand module has ``main(argv=None) -> int`` and builds its parser inside a
function, so importing this module runs nothing and each command is testable on its own.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from ivf_perception.openmp import prefer_passive_waiting

__all__ = ["main", "COMMANDS"]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ivf_perception.cli.demo", "generate a sample sequence, fuse it with the bundled model, report"),
    "fuse": ("ivf_perception.cli.fuse", "fuse folders of thermal/visible images into fused, label, overlay PNGs"),
    "eval-fusion": ("ivf_perception.cli.eval_fusion", "fusion metrics of fused images against their sources"),
    "bench": ("ivf_perception.cli.bench", "parameters, GFLOPs, latency per variant; selective-scan speed"),
    "generate": ("ivf_perception.cli.generate", "write generated labelled scenes as a folder dataset and/or bag"),
    "replay": ("ivf_perception.cli.replay", "replay a rosbag2 through the engine: output bag, metrics, HTML report"),
    "compare": ("ivf_perception.cli.compare", "two variants or weight files on the same bag, metrics side by side"),
    "extract": ("ivf_perception.cli.extract", "paired frames of a bag as a dataset folder (vi/, ir/, labels/)"),
    "node": ("ivf_perception.cli.node", "start the live ROS 2 fusion node (rclpy arguments pass through)"),
    "play": ("ivf_perception.cli.play", "publish a rosbag2's image topics with their recorded timing"),
    "bench-node": ("ivf_perception.cli.bench_node", "fusion node overhead and sustained rate at 640x480, 30 Hz"),
    "export-onnx": ("ivf_perception.cli.export_onnx", "ONNX file of engine weights (fixed or dynamic size), checked"),
    "clip-text-features": ("ivf_perception.cli.clip_text_features", "CLIP text features of a class list (for CMFS)"),
    "convert-upfusion": ("ivf_perception.cli.convert_upfusion", "the released UP-Fusion Fuse.pth as engine weights"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: ivf-perception COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `ivf-perception COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from ivf_perception import __version__
        print(f"ivf-perception {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"ivf-perception: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    prefer_passive_waiting()  # before a command module imports torch
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
