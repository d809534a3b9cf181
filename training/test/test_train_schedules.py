"""The learning-rate schedules on timm's schedulers give the values of the schedules they replaced.

The literals below were computed with the previous pure-function schedules (``WarmupCosine``,
``WarmupPoly``, ``WarmupExp`` of ivf_training 0.1.0) at 200 steps with a 5 % warm-up; timm's
formulas order the same floating-point operations differently, hence ``rel=1e-12``.
"""

from __future__ import annotations

import pytest
from lr_helpers import lrs, optimizer
from timm.scheduler import CosineLRScheduler, PolyLRScheduler

from ivf_training.config import OptimConfig
from ivf_training.schedules import WarmupExpScheduler, build_schedule

STEPS = (0, 3, 7, 8, 40, 99, 150, 199)
PREVIOUS = {
    "warmup_cosine": [3e-4, 6.6e-4, 1.1400000000000002e-3, 1.26e-3, 1.445199708016603e-3, 1.0910826199673918e-3,
                      7.411912629590699e-4, 6e-4],
    "poly": [6e-6, 2.2199999999999998e-05, 4.3799999999999994e-05, 4.92e-05, 5.1356218568406444e-05,
             3.383261966878136e-05, 1.7803775062380154e-05, 0.0],
    "exp": [1e-4, 3.7e-4, 7.300000000000001e-4, 8.2e-4, 9.813320655262287e-4, 9.456289728195515e-4,
            9.158154222394069e-4, 8.880567838392529e-4],
}
CONFIGS = {
    "warmup_cosine": OptimConfig(lr_start=3e-4, lr_peak=1.5e-3, lr_end=6e-4, warmup_fraction=0.05),
    "poly": OptimConfig(lr_start=6e-6, lr_peak=6e-5, lr_end=0.0, warmup_fraction=0.05, schedule="poly", power=0.9),
    "exp": OptimConfig(lr_start=1e-4, lr_peak=1e-3, warmup_fraction=0.05, schedule="exp", gamma_decay=0.99),
}
CLASSES = {"warmup_cosine": CosineLRScheduler, "poly": PolyLRScheduler, "exp": WarmupExpScheduler}


@pytest.mark.parametrize("name", list(PREVIOUS))
def test_values_equal_the_previous_schedules(name: str) -> None:
    o = CONFIGS[name]
    s = build_schedule(o, optimizer(o.lr_peak), 200, steps_per_epoch=16)
    assert isinstance(s, CLASSES[name])
    assert lrs(s, STEPS) == pytest.approx(PREVIOUS[name], rel=1e-12, abs=0.0)


@pytest.mark.parametrize("name", list(PREVIOUS))
def test_a_schedule_is_a_function_of_the_step(name: str) -> None:
    """Resuming sets the rate of step N without replaying steps 0..N-1."""
    o = CONFIGS[name]
    forward = lrs(build_schedule(o, optimizer(o.lr_peak), 200, steps_per_epoch=16), range(200))
    jumped = lrs(build_schedule(o, optimizer(o.lr_peak), 200, steps_per_epoch=16), [150, 7, 99])
    assert jumped == [forward[150], forward[7], forward[99]]
