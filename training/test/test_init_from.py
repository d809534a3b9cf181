"""``model.init_from``: fine-tuning and stage hand-over start from trained weights, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ivf_perception.engine.weights import WeightsInfo, save_weights
from ivf_perception.models import build_model
from ivf_training.build import load_initial_weights
from ivf_training.config import ConfigError, load_config


def test_engine_weights_and_checkpoints_initialise_the_model(tmp_path: Path) -> None:
    trained = build_model("test_s4fusion")
    for p in trained.parameters():
        p.data.normal_()
    engine_file = save_weights(trained.state_dict(), tmp_path / "w.safetensors",
                               WeightsInfo(variant="test_s4fusion", preset="test", num_classes=9))
    ckpt_file = tmp_path / "best.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(ckpt_file))
    (tmp_path / "best.json").write_text('{"step": 10, "metrics": {}}')  # a run's metadata, not a sidecar
    for source in (engine_file, ckpt_file):
        fresh = build_model("test_s4fusion")
        load_initial_weights(fresh, source)
        for (name, a), b in zip(fresh.state_dict().items(), trained.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)


def test_mismatch_and_missing_are_config_errors(tmp_path: Path) -> None:
    other = build_model("test_s4fusion", num_classes=4)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match="does not fit the configured model"):
        load_initial_weights(build_model("test_s4fusion"), path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_initial_weights(build_model("test_s4fusion"), tmp_path / "nope.safetensors")


def test_recipe_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["model.init_from=runs/a/ckpt/best.safetensors", "max_steps=1",
                             "data.generated.train_count=4", "data.generated.val_count=2",
                             "data.generated.val_start=100"])
    assert cfg.model.init_from == str(tmp_path / "runs/a/ckpt/best.safetensors")
