"""The bundled Fast DDS profile for large images, and how the commands apply it.

Why: with Fast DDS defaults about one 640x480 rgb8 frame in three is lost between processes at
30 Hz, because the shared-memory segment is too small for several images in flight.
``config/fastdds_large_images.xml`` declares a 16 MiB shared-memory segment plus UDPv4 (for
other hosts) and turns the built-in transports off. Fast DDS reads it from the environment
variable ``FASTDDS_DEFAULT_PROFILES_FILE`` when a process creates its participant, so every
process on the image path (camera driver, player, this node, RViz) should have it set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["PROFILE_ENV", "PROFILE_NAME", "large_images_profile", "apply_large_images_profile"]

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds_large_images.xml"


def large_images_profile() -> Path | None:
    """The profile file: the source tree's ``config/`` or the installed ``share/ivf_perception/config/``."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME]
    prefixes = [sys.prefix] + [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [Path(p) / "share" / "ivf_perception" / "config" / PROFILE_NAME for p in prefixes]
    return next((p for p in candidates if p.is_file()), None)


def apply_large_images_profile(env: MutableMapping[str, str] | None = None) -> str | None:
    """Point ``FASTDDS_DEFAULT_PROFILES_FILE`` at the bundled profile unless one is already set.

    Must run before ``rclpy.init`` (the participant reads it when created).

    Returns:
        The profile now in effect (the user's own or ours), or None when ours is not found.
    """
    env = os.environ if env is None else env
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV]
    profile = large_images_profile()
    if profile is None:
        return None
    env[PROFILE_ENV] = str(profile)
    return str(profile)
