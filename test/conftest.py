"""Shared fixtures: real-data location, seeds, and a small CPU thread budget.

CI runs on 2 cores; one torch thread per test process avoids oversubscription.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("AMENT_PREFIX_PATH", str(REPO_ROOT / ".venv"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # CI has 2 cores; oversubscription makes tiny models ~50x slower


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip with the reason (a user's fresh clone has no shared/ beside it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engine weights of the micro test model (seeded).

    Shared by the node and replay tests, so every front door under test loads the same model.
    """
    from ivf_perception.engine import WeightsInfo, save_weights
    from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
    from ivf_perception.models import build_model

    torch.manual_seed(1234)
    model = build_model("test_s4fusion", num_classes=len(MFNET_CLASSES))
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=len(MFNET_CLASSES),
                       classes=list(MFNET_CLASSES), palette=list(MFNET_PALETTE))
    return save_weights(model.state_dict(), tmp_path_factory.mktemp("weights") / "test_s4fusion.safetensors", info)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
