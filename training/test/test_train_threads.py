"""``ivf-train --threads``: the main process's thread pools sized next to single-threaded loader workers."""

from __future__ import annotations

import cv2
import pytest
import torch

from ivf_perception.engine import threads as th
from ivf_perception.engine.threads import single_thread_worker
from ivf_training.cli import _apply_threads, build_parser


@pytest.fixture(autouse=True)
def _restore_thread_pools():
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)


def test_every_training_command_takes_threads() -> None:
    parser = build_parser()
    assert parser.parse_args(["bench", "--threads", "2"]).threads == 2
    assert parser.parse_args(["run", "recipe.yaml"]).threads == 0
    assert parser.parse_args(["resume", "runs/x", "--threads", "3"]).threads == 3
    assert parser.parse_args(["eval", "w.safetensors", "--dataset", "generated", "--threads", "1"]).threads == 1


def test_auto_reserves_the_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th, "usable_cores", lambda: 8)
    _apply_threads(0, num_workers=6)
    assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
    _apply_threads(0, num_workers=0)  # no workers: one core is still left to the rest of the machine
    assert torch.get_num_threads() == 4
    _apply_threads(3, num_workers=6)
    assert torch.get_num_threads() == 3


def test_loader_workers_use_one_thread_each() -> None:
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    single_thread_worker(0)
    assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
