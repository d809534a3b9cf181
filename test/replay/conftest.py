"""Fixtures of the replay tests: tiny generated bags with ground truth and the micro model.

Sizes are tiny (64x96, 6 frames, day and night) and the engine is the ``test_s4fusion`` micro
variant on the CPU, so a whole replay takes well under a second.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from replay_helpers import CONFIG, FRAMES

from ivf_perception.engine import Engine
from ivf_perception.replay.runner import ReplayOptions
from ivf_perception.scenes import write_scene_bag


@pytest.fixture(scope="session")
def bag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bags")


@pytest.fixture(scope="session")
def mcap_bag(bag_dir: Path) -> Path:
    """RGB + mono8 thermal (3 ms stamp jitter) + labels, MCAP."""
    return write_scene_bag(bag_dir / "scenes_mcap", FRAMES, CONFIG, storage="mcap")


@pytest.fixture(scope="session")
def sqlite_bag(bag_dir: Path) -> Path:
    """The same scenes as a Humble SQLite3 bag with 16-bit raw thermal."""
    return write_scene_bag(bag_dir / "scenes_sqlite", FRAMES, CONFIG, storage="sqlite3", distro="humble",
                           thermal_encoding="mono16")


@pytest.fixture
def copy_bag(tmp_path: Path) -> Callable[[Path], Path]:
    """A private copy of a session bag, for tests that damage it."""
    def copy(bag: Path) -> Path:
        return Path(shutil.copytree(bag, tmp_path / f"copy_{bag.name}"))
    return copy


@pytest.fixture(scope="session")
def micro_engine() -> Engine:
    return Engine("test_s4fusion", device="cpu")


@pytest.fixture
def options(tmp_path: Path) -> Callable[..., ReplayOptions]:
    """ReplayOptions for a bag, writing into a fresh folder, no progress bar."""
    def make(bag: Path, **kwargs: object) -> ReplayOptions:
        kwargs.setdefault("out", tmp_path / "out")
        return ReplayOptions(bag=bag, progress=False, **kwargs)  # type: ignore[arg-type]
    return make
