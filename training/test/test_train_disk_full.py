"""A full disk while checkpointing keeps the previous checkpoint and says so."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import ivf_training.checkpoint as checkpoint_module
from ivf_training.checkpoint import CheckpointError, load_checkpoint
from ivf_training.cli import main
from ivf_training.config import TrainConfig, config_to_dict
from ivf_training.trainer import resume_run, start_run

MakeConfig = Callable[..., TrainConfig]


def _full_disk_after(calls: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` for the first ``calls`` calls, then ENOSPC (after writing a partial file, as a
    real full disk does)."""
    count = {"n": 0}

    def write(obj: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] > calls:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *args, **kwargs)

    return write


@pytest.mark.parametrize("target", ["model", "state"])
def test_disk_full_keeps_the_previous_checkpoint(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch,
                                                 target: str) -> None:
    # safetensors writes: last@3, best@6 (validation at the end), last@6; torch.save: last@3, last@6
    trainer = start_run(make_config("val_every=0", "tensorboard=false"))
    if target == "model":  # the model file of the step-6 checkpoint cannot be written
        monkeypatch.setattr(checkpoint_module, "save_file", _full_disk_after(2, checkpoint_module.save_file))
    else:  # its state file cannot be written, after the model file was
        monkeypatch.setattr(torch, "save", _full_disk_after(1, torch.save))
    with pytest.raises(CheckpointError) as exc:
        trainer.fit()
    msg = str(exc.value)
    assert "the disk is full" in msg and "last.safetensors is kept" in msg
    assert f"ivf-train resume {trainer.run_dir}" in msg
    monkeypatch.undo()
    ckpt = trainer.run_dir / "ckpt"
    assert not list(ckpt.glob("*.tmp"))  # partial files removed
    assert load_checkpoint(ckpt)[1]["step"] == 3  # the previous checkpoint, intact and verified
    assert resume_run(trainer.run_dir).step == 3


def test_disk_full_keeps_the_previous_best(make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = start_run(make_config("max_steps=4", "val_every=2", "tensorboard=false"))
    trainer.fit(stop_at_step=2)  # best at step 2
    ckpt = trainer.run_dir / "ckpt"
    before = (ckpt / "best.safetensors").read_bytes(), (ckpt / "best.json").read_text()
    monkeypatch.setattr(checkpoint_module, "save_file", _full_disk_after(0, checkpoint_module.save_file))
    trainer.best_value = -1.0  # any mIoU is better: the next validation saves a new best
    with pytest.raises(CheckpointError, match="the disk is full .*best.safetensors is unchanged"):
        trainer.validate_and_track()
    assert not list(ckpt.glob("*.tmp"))
    assert ((ckpt / "best.safetensors").read_bytes(), (ckpt / "best.json").read_text()) == before


def test_cli_reports_a_full_disk_in_one_line(make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(make_config("max_steps=2", "ckpt_every=1", "val_every=0"))))
    monkeypatch.setattr(checkpoint_module, "save_file", _full_disk_after(0, checkpoint_module.save_file))
    assert main(["run", str(recipe), "name=full"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ivf-train: error: could not save a checkpoint: the disk is full")
    assert "no checkpoint exists yet" in err and "\n" not in err
