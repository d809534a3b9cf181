"""The lineage of exported weights: ``ivf-train run`` records its recipe and overrides in
``origin.json``, and export follows ``model.init_from`` back through the run directories, so a
sidecar names every stage that made its weights (the bundled default has seven)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ivf_perception.engine import DEFAULT_WEIGHTS
from ivf_perception.engine.weights import read_sidecar
from ivf_perception.export.onnx import file_sha256
from ivf_training.cli import main as train_main
from ivf_training.config import ConfigError, TrainConfig, load_config
from ivf_training.lineage import run_lineage
from ivf_training.trainer import start_run

STANDIN = "test_training_standin"  # registered by conftest.py

MODEL = {"variant": STANDIN, "preset": "tiny", "num_classes": 9}
SMALL = {
    "model": MODEL,
    "data": {"generated": {"train_count": 8, "val_count": 2, "scene": {"height": 64, "width": 80}}},
    "max_steps": 2, "batch_size": 2, "crop": 64, "val_every": 0, "ckpt_every": 2, "log_every": 1,
    "progress": False, "tensorboard": False, "seed": 7,
}


def _recipe(folder: Path, name: str, **changes: object) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **changes}))
    return path


def _two_stages(tmp_path: Path) -> tuple[Path, Path]:
    """Stage one from scratch, stage two from its last checkpoint, both through ``ivf-train run``."""
    runs = tmp_path / "runs"
    first = _recipe(tmp_path, "first")
    second = _recipe(tmp_path, "second", model={**MODEL, "init_from": str(runs / "one/ckpt/last.safetensors")})
    assert train_main(["run", str(first), f"out_dir={runs}", "name=one"]) == 0
    assert train_main(["run", str(second), f"out_dir={runs}", "name=two", "max_steps=3", "ckpt_every=3"]) == 0
    return runs / "one", runs / "two"


def test_export_lists_every_stage_with_its_recipe(tmp_path: Path) -> None:
    one, two = _two_stages(tmp_path)
    assert json.loads((one / "origin.json").read_text()) == {
        "recipe": str(tmp_path / "first.yaml"), "overrides": [f"out_dir={tmp_path / 'runs'}", "name=one"]}
    out = tmp_path / "two.safetensors"
    assert train_main(["export", str(two), "--out", str(out)]) == 0
    assert read_sidecar(out).lineage == [
        {"run": "one", "recipe": str(tmp_path / "first.yaml"),
         "overrides": [f"out_dir={tmp_path / 'runs'}", "name=one"], "max_steps": 2, "started_from": None},
        {"run": "two", "recipe": str(tmp_path / "second.yaml"),
         "overrides": [f"out_dir={tmp_path / 'runs'}", "name=two", "max_steps=3", "ckpt_every=3"],
         "max_steps": 3, "started_from": "one/ckpt/last.safetensors"},
    ]


def test_recipe_inside_the_working_directory_is_recorded_relative(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``make train-default`` runs from the project root: sidecars say training/recipes/...,
    not the path of the machine that trained them."""
    (tmp_path / "recipes").mkdir()
    _recipe(tmp_path / "recipes", "stage")
    monkeypatch.chdir(tmp_path)
    assert train_main(["run", str(tmp_path / "recipes" / "stage.yaml"), "name=rel", "max_steps=1"]) == 0
    assert json.loads((tmp_path / "runs" / "rel" / "origin.json").read_text())["recipe"] == "recipes/stage.yaml"


def test_a_deleted_stage_is_named_missing_and_export_still_succeeds(tmp_path: Path) -> None:
    one, two = _two_stages(tmp_path)
    shutil.rmtree(one)
    lineage = run_lineage(two)
    assert lineage[0] == {"weights": str(one / "ckpt/last.safetensors"),
                          "missing": f"{one / 'ckpt/last.safetensors'} no longer exists"}
    assert [r.get("run") for r in lineage] == [None, "two"]


def test_an_unreadable_earlier_run_is_named_missing(tmp_path: Path) -> None:
    one, two = _two_stages(tmp_path)
    (one / "config.yaml").write_text("model: [unclosed")
    first, last = run_lineage(two)
    assert first["run"] == "one" and "not valid YAML" in first["missing"] and last["run"] == "two"


def test_a_run_without_origin_json_keeps_its_place_without_a_recipe(make_config: Callable[..., TrainConfig]) -> None:
    """Runs written before origin.json existed, or started from Python (start_run without origin)."""
    trainer = start_run(make_config("name=plain", "max_steps=4"))
    assert not (trainer.run_dir / "origin.json").exists()
    assert run_lineage(trainer.run_dir) == [
        {"run": "plain", "recipe": None, "overrides": [], "max_steps": 4, "started_from": None}]


def test_a_fine_tune_of_the_bundled_default_inherits_its_lineage(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.variant=s4fusion", "model.preset=tiny", "model.num_classes=9",
                             "model.init_from=default", "model.overrides={fusion_base: adaptive_blend}",
                             f"out_dir={tmp_path}", "name=ft", "max_steps=5",
                             "data.generated.train_count=2", "data.generated.val_count=1", "batch_size=2"])
    trainer = start_run(cfg, origin={"recipe": "training/recipes/s4fusion_finetune_bag.yaml", "overrides": []})
    lineage = run_lineage(trainer.run_dir)
    bundled = read_sidecar(DEFAULT_WEIGHTS).lineage
    assert len(bundled) == 9 and lineage[:9] == bundled  # eight stages and the calibration
    assert bundled[8]["calibration"] == "class_bias"
    assert lineage[9] == {"weights": "default", "sha256": file_sha256(DEFAULT_WEIGHTS)}
    assert lineage[10] == {"run": "ft", "recipe": "training/recipes/s4fusion_finetune_bag.yaml", "overrides": [],
                          "max_steps": 5, "started_from": "default"}


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        run_lineage(tmp_path)
