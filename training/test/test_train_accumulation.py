"""Gradient accumulation: two half batches make the same optimiser step as one full batch.

Exact up to summation order for the stand-in: GroupNorm (no batch statistics), dropout off, no
ignored pixels, and every loss term a mean over equally many values per micro-batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ivf_training.config import ConfigError, TrainConfig
from ivf_training.trainer import start_run

MakeConfig = Callable[..., TrainConfig]
COMMON = ("model.overrides={dropout: 0.0}", "data.scale_range=[1.0, 1.5]", "max_steps=3", "ckpt_every=0",
          "val_every=0", "tensorboard=false")


def _train_totals(run_dir: Path) -> list[float]:
    records = map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
    return [r["total"] for r in records if r["kind"] == "train"]


def test_two_half_batches_equal_one_full_batch(make_config: MakeConfig, tmp_path: Path) -> None:
    full = start_run(make_config(*COMMON, root=tmp_path / "full"))
    full.fit()
    halves = start_run(make_config(*COMMON, "accum_steps=2", root=tmp_path / "halves"))
    halves.fit()
    a, b = full.model.state_dict(), halves.model.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5, msg=key)
    assert _train_totals(halves.run_dir) == pytest.approx(_train_totals(full.run_dir), rel=1e-5)


def test_batch_must_split_into_micro_batches(make_config: MakeConfig) -> None:
    with pytest.raises(ConfigError, match="batch_size 4 is not divisible by accum_steps 3"):
        make_config("accum_steps=3")
