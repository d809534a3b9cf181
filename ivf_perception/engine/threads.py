"""How many CPU threads the engine's libraries use: one rule for every front door.

Why: torch (OpenMP, MKL, oneDNN) and OpenCV each default to one thread per logical CPU. A robot
always runs other processes beside this one (drivers, planners, recorders), and on a machine
whose cores are all busy, threads that wait on each other in every one of the model's thousands
of parallel regions turn a 0.46 s frame into anything between 0.9 and 53 s (measured on a
2-core machine with one other busy process; README "Threads"). So the default, ``threads = 0``
("auto"), leaves one core to the rest of the machine and never goes above
:data:`MAX_AUTO_THREADS`, where the model's many small operations stop scaling anyway.

The node (``threads`` parameter), replay and the CLI (``--threads``) reach :func:`apply_threads`
through :meth:`Engine.from_config <ivf_perception.engine.Engine.from_config>`; training calls it
from ``ivf-train --threads``. Thread counts are per process, so the last call wins.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

from ivf_perception.engine.config import ParameterValueError

__all__ = [
    "AUTO",
    "MAX_AUTO_THREADS",
    "usable_cores",
    "auto_threads",
    "resolve_threads",
    "apply_threads",
    "single_thread_worker",
]

_log = logging.getLogger(__name__)

AUTO = 0
"""The ``threads`` value that asks for :func:`auto_threads`."""

MAX_AUTO_THREADS = 4
"""Upper bound of the automatic choice: beyond it the per-operation overhead of the selective
scan's small tensors dominates, and more threads mostly add contention."""

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _allowed_cpus() -> set[int]:
    """Logical CPUs this process may run on (taskset, cpusets), or all of them where unknown."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _physical_cores(cpus: set[int]) -> int:
    """Distinct physical cores among ``cpus`` (SMT siblings share one), from Linux sysfs.

    Two hyper-threads of one core share its vector units, so a compute-bound thread pool gains
    nothing from the second sibling; where the topology is not readable, each CPU counts.
    """
    cores = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def _cgroup_quota() -> int | None:
    """CPUs granted by a cgroup v2 quota (``docker run --cpus``), rounded up; None when unlimited."""
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Physical cores this process can use: its CPU affinity, SMT siblings counted once, a
    container's CPU quota applied."""
    cores = _physical_cores(_allowed_cpus())
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def auto_threads(reserve: int = 1) -> int:
    """The automatic thread count: usable cores minus ``reserve``, at least 1, at most 4.

    Args:
        reserve: cores left to other processes (1 for the node and the CLI: a robot's other
            nodes; training reserves its data-loader workers).
    """
    return max(1, min(MAX_AUTO_THREADS, usable_cores() - max(0, int(reserve))))


def resolve_threads(requested: int, reserve: int = 1) -> int:
    """The thread count for a ``threads`` setting: ``0`` = :func:`auto_threads`, else as given.

    Raises:
        ParameterValueError: a negative or non-integer value (a ``ValueError``).
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ParameterValueError(f"threads must be 0 (auto) or a positive integer, got {requested!r}")
    return auto_threads(reserve) if requested == AUTO else requested


def apply_threads(requested: int, reserve: int = 1) -> int:
    """Set torch's and OpenCV's CPU thread pools from a ``threads`` setting; return the count.

    torch's inter-op pool (used only by ``torch.jit.fork`` style parallelism, not by eager
    inference) is set to one thread when it has not started yet; it cannot change afterwards,
    which is harmless for inference and therefore not an error.

    Raises:
        ParameterValueError: as :func:`resolve_threads`.
    """
    import cv2
    import torch

    count = resolve_threads(requested, reserve)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # already started or set: only settable once per process
        torch.set_num_interop_threads(1)
    cv2.setNumThreads(count)
    _log.debug("CPU threads: %d (requested %s, %d usable cores)", count, requested or "auto", usable_cores())
    return count


def single_thread_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: one torch and one OpenCV thread per worker process.

    torch already limits its own pool in workers; OpenCV's pool (resizes, warps in the data
    readers) would otherwise start one thread per CPU in every worker.
    """
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
