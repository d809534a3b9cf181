"""Per-stage wall-clock timing that is correct on asynchronous devices.

CUDA kernels return before they finish, so a stage's time is only meaningful after a
device synchronisation; the timer does that for CUDA devices and nothing on the CPU.
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

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())
