"""``ivf-perception node``: start the fusion node (the same node as the ``fusion_node`` script).

``--params-file FILE`` loads parameters (see config/fusion_node.yaml); everything after
``--ros-args`` goes to rclpy unchanged (``-p name:=value``, ``-r rgb/image:=/camera/image``,
``-r __ns:=/robot``, ``--log-level debug``). By default the node configures and activates
itself; with ``-p autostart:=false`` it waits for lifecycle transitions. The bundled Fast DDS
profile for large images is used unless FASTDDS_DEFAULT_PROFILES_FILE is set
(``--no-dds-profile``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import user_errors

__all__ = ["build_parser", "main"]

PROG = "ivf-perception node"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Arguments after --ros-args go to rclpy.")
    p.add_argument("--params-file", action="append", default=[], metavar="FILE",
                   help="ROS 2 parameter YAML (repeatable; later files win)")
    p.add_argument("--no-dds-profile", action="store_true",
                   help="do not apply the bundled Fast DDS large-image profile")
    return p


@user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from rclpy.utilities import remove_ros_args

    args = build_parser().parse_args(remove_ros_args(["node", *argv])[1:])
    for path in args.params_file:
        if not Path(path).is_file():
            raise FileNotFoundError(f"parameter file {path} not found")
    if not args.no_dds_profile:
        from ivf_perception.nodes.dds import apply_large_images_profile

        apply_large_images_profile()
    from ivf_perception.nodes.fusion_node import main as node_main

    # The files go first, as their own ROS-arguments section ("--" closes it), so that the user's
    # own "-p name:=value" after them wins; our options are not ROS arguments and rclpy ignores them.
    files = [a for path in args.params_file for a in ("--params-file", str(path))]
    return node_main(["fusion_node", *(["--ros-args", *files, "--"] if files else []), *argv])
