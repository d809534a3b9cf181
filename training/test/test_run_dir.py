"""The run directory's configuration: what ``resume``, ``eval`` and ``export`` read back."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ivf_training.config import ConfigError, TrainConfig, config_to_dict, dump_config
from ivf_training.run_dir import read_run_config

MakeConfig = Callable[..., TrainConfig]

# the loss section as runs wrote it while the settings of all kinds were one flat section
FLAT_LOSS = {
    "seg": 1.0, "fusion": 1.0, "intensity": 1.0, "ssim": 1.0, "gradient": 15.0, "color": 1.0, "perception": 0.1,
    "perception_texture": 1.0, "resnet50_weights": None, "kind": "s4fusion", "gamma": 0.5, "beta": 1.7,
    "moe_balance": 0.01, "mask_patch": 32, "mask_ratio": [0.25, 0.75], "rec_intensity": 5.0, "rec_gradient": 5.0,
    "seg_aux": 0.4, "binary": 1.0, "boundary": 1.0, "kd": 1.0, "kd_temperature": 4.0, "ohem_thresh": 0.7,
    "ohem_min_kept": None, "boundary_width": 1, "fair_alpha": 0.8, "dwa_temperature": 500.0, "dwa_period": "step",
    "teacher_weights": None,
}


def test_round_trip_writes_only_the_kinds_settings(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config("loss.kind=cmfs", "loss.gamma=0.8")
    dump_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["loss"]
    assert set(written) == {"kind", "seg", "fusion", "intensity", "color", "gradient", "gamma", "beta", "moe_balance",
                            "gradient_form"}
    assert read_run_config(tmp_path) == cfg


@pytest.mark.parametrize("kind", ["s4fusion", "cmfs"])
def test_a_run_written_with_the_flat_loss_section_still_reads(make_config: MakeConfig, tmp_path: Path,
                                                              kind: str) -> None:
    # settings added later (CMFS's gradient_form) read as the values those runs trained with
    # S4Fusion's perception weight moved from the ln(1000)-normalised entropy to nats
    legacy = ["loss.gradient_form=magnitude"] if kind == "cmfs" else [f"loss.perception={0.1 / math.log(1000.0)}"]
    cfg = make_config(f"loss.kind={kind}", "loss.gradient=0.2", *legacy)
    data = config_to_dict(cfg)
    data["loss"] = {**FLAT_LOSS, "kind": kind, "gradient": 0.2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path) == cfg


def test_an_old_run_without_a_loss_kind_converts_as_the_default_kind(make_config: MakeConfig,
                                                                     tmp_path: Path) -> None:
    cfg = make_config(f"loss.perception={0.1 / math.log(1000.0)}")
    data = config_to_dict(cfg)
    data["loss"] = {k: v for k, v in FLAT_LOSS.items() if k != "kind"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path) == cfg


def test_an_old_cmfs_run_keeps_its_causal_moe_mamba(make_config: MakeConfig, tmp_path: Path) -> None:
    """A run written before the MoE-Mamba switch (no key in model.overrides) resumes and exports
    the causal mixer it trained; a new run's config.yaml carries the switch (start_run pins it)."""
    data = config_to_dict(make_config("model.variant=cmfs", "model.preset=paper", "loss.kind=cmfs"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path).model.overrides == {"moe_mamba_bidirectional": False}
    data["model"]["overrides"] = {"moe_mamba_bidirectional": True}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert read_run_config(tmp_path).model.overrides == {"moe_mamba_bidirectional": True}


def test_an_unknown_loss_key_still_fails(make_config: MakeConfig, tmp_path: Path) -> None:
    data = config_to_dict(make_config())
    data["loss"]["ssim_weight"] = 1.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unknown key 'loss.ssim_weight'"):
        read_run_config(tmp_path)
