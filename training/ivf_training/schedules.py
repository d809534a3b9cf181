"""Learning-rate schedules: linear warm-up, then a cosine, polynomial or exponential decay.

The cosine and polynomial schedules are timm's (:class:`timm.scheduler.CosineLRScheduler`,
:class:`timm.scheduler.PolyLRScheduler`), set up as one cycle counted in optimiser steps: the
warm-up rises linearly from ``lr_start`` to the optimiser's base rate ``lr_peak`` over the first
``warmup_fraction`` of the steps, and the decay (``warmup_prefix``) then runs over the remaining
``max_steps − 1 − warmup`` steps, reaching ``lr_end`` at the last step. timm's schedulers are
pure functions of the step count they are given, so resuming needs no scheduler state.

The exponential decay MAFS trains with is ours (:class:`WarmupExpScheduler`, on timm's
:class:`~timm.scheduler.scheduler.Scheduler` base): timm's step and multi-step schedulers
decay in stairs and count the decay from step 0 rather than from the end of the warm-up,
whereas this one is continuous, ``lr_peak·gamma_decay^e`` with ``e`` the (fractional) number
of epochs since the warm-up ended.
"""

from __future__ import annotations

from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.optim import Optimizer

from ivf_training.config import ConfigError, OptimConfig

__all__ = ["WarmupExpScheduler", "build_schedule"]


class WarmupExpScheduler(Scheduler):
    """Linear warm-up from ``warmup_lr_init`` to the base rate, then ``base·gamma^e``, ``e`` the
    epochs (fractional) since the warm-up ended; per optimiser step (``step_update``).

    Args:
        optimizer: its learning rate at construction is the base (peak) rate.
        warmup_t: warm-up steps.
        warmup_lr_init: learning rate at step 0.
        steps_per_epoch: optimiser steps per pass over the training mix, >= 1.
        gamma: learning-rate factor per epoch, in (0, 1].
    """

    def __init__(self, optimizer: Optimizer, *, warmup_t: int, warmup_lr_init: float, steps_per_epoch: int,
                 gamma: float) -> None:
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.warmup_t = warmup_t
        self.warmup_lr_init = warmup_lr_init
        self.steps_per_epoch = steps_per_epoch
        self.gamma = gamma
        if warmup_t:
            self.update_groups(warmup_lr_init)

    def _get_lr(self, t: int) -> list[float]:
        if t < self.warmup_t:
            return [self.warmup_lr_init + (peak - self.warmup_lr_init) * t / self.warmup_t for peak in self.base_values]
        return [peak * self.gamma ** ((t - self.warmup_t) / self.steps_per_epoch) for peak in self.base_values]


def build_schedule(o: OptimConfig, optimizer: Optimizer, max_steps: int,
                   steps_per_epoch: int | None = None) -> Scheduler:
    """The schedule named by ``optim.schedule`` over ``optimizer``, whose learning rate must be
    ``o.lr_peak`` (the base rate the schedules scale); call ``step_update(step)`` before each
    optimiser step.

    Args:
        steps_per_epoch: optimiser steps per pass over the training mix; the ``exp`` schedule
            decays per epoch and needs it.
    """
    warmup = int(o.warmup_fraction * max_steps)
    decay_steps = max(1, max_steps - 1 - warmup)
    if o.schedule == "exp":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ConfigError(f"optim.schedule exp decays per epoch and needs steps_per_epoch >= 1, "
                              f"got {steps_per_epoch}")
        return WarmupExpScheduler(optimizer, warmup_t=warmup, warmup_lr_init=o.lr_start,
                                  steps_per_epoch=steps_per_epoch, gamma=o.gamma_decay)
    common = dict(t_initial=decay_steps, lr_min=o.lr_end, warmup_t=warmup, warmup_lr_init=o.lr_start,
                  warmup_prefix=True, cycle_limit=1, t_in_epochs=False)
    if o.schedule == "poly":
        return PolyLRScheduler(optimizer, power=o.power, **common)
    return CosineLRScheduler(optimizer, **common)
