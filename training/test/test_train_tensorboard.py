"""TensorBoard events: losses, learning rate, metrics and image grids; optional dependency."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ivf_training.config import TrainConfig
from ivf_training.tb_logging import colorize_labels, image_grid
from ivf_training.trainer import resume_run, start_run

MakeConfig = Callable[..., TrainConfig]


def _events(run_dir: Path) -> object:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_scalars_and_images_are_written_and_resume_keeps_one_timeline(make_config: MakeConfig) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    trainer = start_run(make_config("max_steps=4", "val_every=2", "ckpt_every=2", "image_every=2"))
    trainer.fit()
    # as after a kill: steps 3 and 4 are redone from the step-2 checkpoint, their first events purged
    resumed = resume_run(trainer.run_dir, "prev")
    resumed.fit()
    events = _events(trainer.run_dir)
    tags = events.Tags()
    assert {"train/total", "train/seg_ce", "train/lr", "train/imgs_per_s", "val/mIoU", "val/IoU/car",
            "val/fusion/Qabf", "val/loss/total"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/total")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 4]
    images = events.Images("samples")
    assert [e.step for e in images] == [2, 4]
    # rows RGB, thermal, fused, labels, prediction of the 4 crops of 64x64 with 2 px padding
    assert (images[0].height, images[0].width) == (5 * 66 + 2, 4 * 66 + 2)


def test_training_works_without_tensorboard(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    trainer = start_run(make_config("max_steps=2", "ckpt_every=1", "log_every=1"))
    with caplog.at_level(logging.INFO, logger="ivf_training.tb_logging"):
        trainer.fit(stop_at_step=1)
        trainer.fit()
    off = [r for r in caplog.records if "TensorBoard logging is off" in r.getMessage()]
    assert len(off) == 1 and "pip install tensorboard" in off[0].getMessage()
    assert trainer.step == 2 and not (trainer.run_dir / "tb").exists()


def test_label_colours_and_grid_layout() -> None:
    labels = torch.tensor([[[0, 1], [255, 7]]])
    rgb = colorize_labels(labels, [0x000000, 0xFF8000])
    assert rgb.shape == (1, 3, 2, 2)
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([1.0, 128 / 255, 0.0]))
    assert rgb[0, :, 1].abs().sum() == 0  # ignored and unknown ids are black
    grid = image_grid([torch.ones(3, 3, 4, 5), torch.zeros(3, 3, 4, 5)], padding=2)
    assert grid.shape == (3, 2 * 6 + 2, 3 * 7 + 2)
    assert grid[:, 2:6, 2:7].min() == 1 and grid[:, 8:12].max() == 0
