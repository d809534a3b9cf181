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


ONNX_TEST_SIZE = (64, 96)
"""Size of the micro model's cached ONNX export: the replay bags' frames (smaller ones are padded)."""


@pytest.fixture(scope="session")
def onnx_size() -> tuple[int, int]:
    """(H, W) of the export in :func:`onnx_cache`."""
    return ONNX_TEST_SIZE


@pytest.fixture(scope="session")
def onnx_cache(test_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ONNX cache folder holding the export of ``test_weights`` at :data:`ONNX_TEST_SIZE`, and that file.

    Exported once per session (the slow part of every ONNX test); the engine, node, fuse and
    replay tests reach it through ``backend_cache_dir`` (a cache hit: same weights, same size)
    or use the file itself as ``.onnx`` weights.
    """
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package, reason=f"{package} is not installed (requirements/ onnx extras)")
    from ivf_perception.engine import Engine
    from ivf_perception.export.cache import cached_onnx

    cache = tmp_path_factory.mktemp("onnx_cache")
    model = Engine("auto", weights=test_weights, device="cpu").model
    assert model is not None
    return cache, cached_onnx(model, test_weights, height=ONNX_TEST_SIZE[0], width=ONNX_TEST_SIZE[1], cache_dir=cache)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
