"""Reading learning rates off the timm-based schedules of ``ivf_training.schedules``.

timm's schedulers write the rate of step ``t`` into their optimiser (``step_update(t)``) rather
than returning it, so the tests read it back from a one-parameter optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.scheduler.scheduler import Scheduler


def optimizer(lr: float) -> torch.optim.Optimizer:
    """An SGD optimiser over one parameter whose base (peak) rate is ``lr``."""
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler: Scheduler, steps: Iterable[int]) -> list[float]:
    """The learning rate ``scheduler`` sets for each of ``steps``."""
    out = []
    for t in steps:
        scheduler.step_update(t)
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out
