"""Configuration: YAML loading, dotted overrides, type checks and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ivf_training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)

MINIMAL = ["data.generated.train_count=8", "data.generated.val_count=2", "max_steps=10"]
RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "s4fusion_generated.yaml"


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, [*MINIMAL, "optim.lr_peak=1e-3", "optim.betas=[0.8, 0.9]", "optim.grad_clip=null",
                             "model.overrides.drop_path=0.0", "data.generated.scene={height: 64, width: 96}"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr_peak == pytest.approx(1e-3) and isinstance(cfg.optim.lr_peak, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.grad_clip is None
    assert cfg.model.overrides == {"drop_path": 0.0}
    assert cfg.data.generated.scene == {"height": 64, "width": 96}
    assert cfg.optim.lr_start == pytest.approx(3e-4) and cfg.optim.lr_end == pytest.approx(6e-4)


def test_yaml_file_with_yaml11_floats(tmp_path: Path) -> None:
    # PyYAML reads "3e-4" (no dot) as a string: float fields must still accept it.
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\noptim:\n  lr_peak: 2e-3\ndata:\n  generated: {train_count: 4, val_count: 1}\n")
    cfg = load_config(path, ["batch_size=2"])
    assert cfg.optim.lr_peak == pytest.approx(2e-3)
    assert cfg.batch_size == 2


def test_unknown_key_in_file_names_key_and_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\noptim:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "unknown key 'optim.lr'" in msg and "lr_peak" in msg and "warmup_fraction" in msg and str(path) in msg


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'; valid keys in 'optim': lr_start, lr_peak"):
        load_config(None, [*MINIMAL, "optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'; valid keys in the top level: model, data"):
        load_config(None, [*MINIMAL, "epoch=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=abc", "batch_size must be an integer, got 'abc'"),
        ("optim.lr_peak=fast", "optim.lr_peak must be a number"),
        ("amp=fp8", "amp must be one of auto, bf16, fp16, off; got 'fp8'"),
        ("optim.betas=[0.9]", "optim.betas must be a list of 2 values"),
        ("progress=1", "progress must be true or false"),
        ("optim=3", "optim must be a mapping, got int: 3"),
        ("max_steps.x=1", "'max_steps' is a value, not a section"),
    ],
)
def test_type_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [*MINIMAL, override])
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.generated.train_count=8"], "set either max_steps or epochs"),
        (["max_steps=3"], "no training data"),
        ([*MINIMAL, "optim.warmup_fraction=1.0"], "warmup_fraction must be in [0, 1)"),
        ([*MINIMAL, "data.generated.val_start=4"], "overlap validation scenes"),
        (["data.generated.train_count=8", "max_steps=3"], "best_metric 'mIoU' needs"),
        ([*MINIMAL, "data.class_names=[a, b]"], "data.class_names has 2 names but model.num_classes is 9"),
        ([*MINIMAL, "data.scale_range=[2.0, 1.0]"], "data.scale_range must satisfy"),
        ([*MINIMAL, "loss.seg_class_weights=[1.0, 2.0]"], "loss.seg_class_weights has 2 weights but the model has 9"),
        ([*MINIMAL, "loss.seg_class_weights=[0.0, 0.0]"], "at least one > 0"),
    ],
)
def test_cross_field_validation(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert message in str(exc.value)


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        parse_overrides(["optim.lr_peak"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["optim..lr=1"])


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"optim": {"lr_peak": 1.0}}
    out = apply_overrides(data, ["optim.lr_peak=2.0"])
    assert data == {"optim": {"lr_peak": 1.0}} and out["optim"]["lr_peak"] == 2.0


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, [*MINIMAL, "data.train_real=[some/dir]"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    assert again == cfg


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [*MINIMAL, "data.train_real=[pairs]", "out_dir=runs"])
    assert cfg.data.train_real == [str(tmp_path / "pairs")]
    assert cfg.out_dir == str(tmp_path / "runs")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config("/nonexistent/recipe.yaml")


def test_recipe_parses_and_keeps_report_sets_out() -> None:
    cfg = load_config(RECIPE)
    assert cfg.model.variant == "s4fusion"
    assert cfg.model.preset in ("tiny", "small")
    assert 128 <= cfg.crop <= 160
    assert cfg.max_steps is not None and cfg.max_steps <= 5000
    used = " ".join(cfg.data.train_real + cfg.data.val_real + cfg.data.train_folders + cfg.data.val_folders)
    assert "roadscene" not in used and "tno" not in used  # held out for reporting
    assert any(p.endswith("llvip/train") for p in cfg.data.train_real)
