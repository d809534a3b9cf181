"""Fixtures of the training tests: real-data location, seeds, a registered stand-in model and small
configurations.

The training package's tests live beside it (``training/test``), apart from the robot package's
``test/`` tree, which never imports ``ivf_training``; the few fixtures both trees need (the
shared data folder, seeding) are therefore written in each tree's conftest.

The stand-in (``test_training_standin``) is NOT a fusion network from a paper: it is a tiny
convolutional U-Net that honours the FusionSegModel contract (fused RGB in [0, 1], logits,
``input_multiple``), so the trainer, checkpoints and export can be tested in seconds on a CPU
independently of the real families. It carries a norm layer, biases and a parameter flagged
``_no_weight_decay`` so the optimiser's parameter groups are exercised too, and dropout so the
resume test checks that the RNG state is restored. The real S4Fusion is
trained by its own test in ``test_trainer.py`` when it is registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models import FusionSegModel, FusionSegOutput, register_model
from ivf_training.config import TrainConfig, load_config

STANDIN = "test_training_standin"

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("AMENT_PREFIX_PATH", str(REPO_ROOT / ".venv"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip with the reason (a user's fresh clone has no shared/ beside it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


class StandInFusionSeg(FusionSegModel):
    """Tiny conv U-Net working at half resolution: fused RGB = sigmoid(logit(rgb) + residual)."""

    input_multiple = 4
    variant = STANDIN

    def __init__(self, num_classes: int = 9, width: int = 12, preset: str = "tiny", dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.preset = preset
        self.stem = nn.Sequential(nn.Conv2d(4, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.GELU())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2), nn.GELU())
        # dropout draws from the global torch RNG: resuming must restore that RNG exactly
        self.up = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), nn.GELU(), nn.Dropout2d(dropout))
        self.fusion_head = nn.Conv2d(width, 3, 3, padding=1)
        self.seg_head = nn.Conv2d(width, num_classes, 1) if num_classes else None
        self.gate = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.gate._no_weight_decay = True  # type: ignore[attr-defined]

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        x0 = self.stem(torch.cat((rgb, thermal), 1))
        x1 = self.down(x0)
        return self.up(torch.cat((F.interpolate(x1, size=x0.shape[-2:]), x0), 1))

    def forward_head(self, features: torch.Tensor, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        size = rgb.shape[-2:]
        residual = F.interpolate(self.fusion_head(features), size=size, mode="bilinear", align_corners=False)
        fused = torch.sigmoid(torch.logit(rgb.clamp(1e-3, 1 - 1e-3)) + residual + self.gate * thermal)
        logits = None
        if self.seg_head is not None:
            logits = F.interpolate(self.seg_head(features), size=size, mode="bilinear", align_corners=False)
        return FusionSegOutput(fused=fused, logits=logits)


@register_model
def test_training_standin(preset: str = "tiny", **kwargs: Any) -> StandInFusionSeg:
    """Registered stand-in (see the module docstring)."""
    return StandInFusionSeg(preset=preset, **kwargs)


def _make_config(root: Path, *overrides: str) -> TrainConfig:
    base = [
        f"model.variant={STANDIN}", "model.preset=tiny", "model.num_classes=9",
        "data.generated.train_count=64", "data.generated.val_count=4",
        "data.generated.scene={height: 64, width: 80}",
        "max_steps=6", "batch_size=4", "crop=64", "val_every=0", "ckpt_every=3", "log_every=1",
        "optim.warmup_fraction=0.2", "progress=false", "seed=7", f"out_dir={root / 'runs'}", "name=run",
    ]
    return load_config(None, [*base, *overrides])


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for these tests: the models are tiny, and on a shared 2-core machine a
    second OpenMP thread that waits for a busy core made training steps ~50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., TrainConfig]:
    """Factory of small CPU configurations: generated 64×80 scenes, the stand-in model, 6 steps
    of batch 4 with checkpoints every 3 steps, runs under ``root`` (default ``tmp_path``).

    Usage: ``make_config("max_steps=3", root=tmp_path / "a")``.
    """

    def factory(*overrides: str, root: Path | None = None) -> TrainConfig:
        return _make_config(root if root is not None else tmp_path, *overrides)

    return factory


@pytest.fixture
def standin() -> type[StandInFusionSeg]:
    """The stand-in model class (registered as ``test_training_standin``)."""
    return StandInFusionSeg
