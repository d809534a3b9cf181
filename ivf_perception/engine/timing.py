"""Per-stage wall-clock timing that is correct on asynchronous devices.

CUDA kernels return before they finish, so a stage's time is only meaningful after a
device synchronisation; the timer does that for CUDA devices and nothing on the CPU.

Besides wall-clock time it keeps the calling thread's CPU time per stage: on a machine whose
cores other processes also use, a 1 ms stage can take 5 ms of wall time waiting to be
scheduled; its CPU time is what the stage itself costs (exact for work done on the calling
thread, as pre/post-processing is with one torch thread; worker-pool threads are not counted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Collects the duration of named stages of one inference call, in milliseconds."""

    def __init__(self, device: torch.device) -> None:
        self._sync = device.type == "cuda"
        self._device = device
        self.ms: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize(self._device)
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (time.thread_time() - cpu_start) * 1e3

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())
