"""Passive OpenMP waiting for the package's own processes (CLI, node, training).

Why: torch's CPU thread pool is OpenMP (libgomp). By default its threads spin at the end of each
parallel region waiting for the next one, which is cheap on an idle machine and ruinous when
another process holds the cores: a spinning thread burns the time slice the thread it waits
for needs. The selective scan runs thousands of small parallel regions per frame, so on a
2-core machine beside one busy process a whole ``fuse`` run was 5.6x faster in median wall
time with ``OMP_WAIT_POLICY=PASSIVE`` (README "Threads"). libgomp reads the variable once, when
torch loads it, so this must run before ``import torch``; an explicit user setting always wins.
"""

from __future__ import annotations

import os
import sys

__all__ = ["WAIT_POLICY", "prefer_passive_waiting"]

WAIT_POLICY = "PASSIVE"


def prefer_passive_waiting() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; True when it takes effect.

    It takes effect only when torch is not imported yet (libgomp reads it at load time); child
    processes inherit it either way.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return "torch" not in sys.modules
