"""``ivf-perception play BAG``: publish a rosbag2's image topics with their recorded timing.

Messages keep their original header stamps and bytes; ``--rate`` scales the speed and
``--loop`` starts again at the end (stamps then jump back, which the fusion node detects and
answers by resetting its pairing). Topics keep their recorded names; remap them with rclpy
arguments, e.g. ``--ros-args -r /camera/rgb/image:=/rgb/image``. ``/clock`` carries the bag's
record time (``--no-clock`` to leave it out), so the node can run with ``use_sim_time:=true``.
Ctrl-C (or SIGTERM) stops the playback and exits 0. The bundled Fast DDS profile
for large images is used unless FASTDDS_DEFAULT_PROFILES_FILE is set (``--no-dds-profile``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from ivf_perception.cli._common import user_errors

__all__ = ["build_parser", "main"]

PROG = "ivf-perception play"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Arguments after --ros-args go to rclpy (remapping, node name, ...).")
    p.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1.0 = recorded timing)")
    p.add_argument("--loop", action="store_true", help="play again from the start at the end, until Ctrl-C")
    p.add_argument("--topics", nargs="+", default=None,
                   help="topics to publish (default: every sensor_msgs/msg/Image and CompressedImage topic)")
    p.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long until every topic has a subscriber before starting")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                   help="sleep this long before playing (after --wait-for-subscribers), so that "
                        "subscribers also finish discovering this publisher")
    p.add_argument("--qos-depth", type=int, default=10, help="history depth of the (reliable) publishers")
    p.add_argument("--no-clock", action="store_true",
                   help="do not publish /clock (default: the record time of each message, for use_sim_time)")
    p.add_argument("--no-dds-profile", action="store_true",
                   help="do not apply the bundled Fast DDS large-image profile")
    return p


@user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from rclpy.utilities import remove_ros_args

    args = build_parser().parse_args(remove_ros_args(["play", *argv])[1:])
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    if args.delay < 0:
        raise ValueError(f"--delay must be >= 0, got {args.delay}")
    if args.qos_depth < 1:
        raise ValueError(f"--qos-depth must be >= 1, got {args.qos_depth}")
    if not args.no_dds_profile:
        from ivf_perception.nodes.dds import apply_large_images_profile

        apply_large_images_profile()

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from ivf_perception.nodes.bag_player import BagPlayer

    # Ctrl-C only sets this event: rclpy's own handler would shut the context down under the
    # publishing loop (the next publish then raised RCLError with a traceback, exit 1).
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=["ivf_perception_play", *argv], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("ivf_perception_player")
    try:
        player = BagPlayer(node, args.bag, args.topics, rate=args.rate, loop=args.loop, qos_depth=args.qos_depth,
                           clock=not args.no_clock)
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(args.wait_for_subscribers, stop):
            node.get_logger().warning(f"not every topic has a subscriber after {args.wait_for_subscribers:g} s; "
                                      "playing anyway")
        stop.wait(args.delay)
        if not stop.is_set():
            node.get_logger().info(f"playing {args.bag}: {', '.join(player.topics)} at {args.rate:g}x"
                                   + (", looping" if args.loop else "") + ("" if args.no_clock else ", /clock"))
            summary = player.play(stop)
            print(f"published {summary.total} messages "
                  f"({', '.join(f'{t}: {n}' for t, n in summary.published.items())}) "
                  f"in {summary.duration_s:.2f} s, {summary.loops} pass(es)" + (" (stopped)" if stop.is_set() else ""))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

