"""``base:`` in recipes: a stage states only what it changes from the stage before, and the
resolved configuration is exactly what the file would say with everything written out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ivf_perception.engine import DEFAULT_WEIGHTS
from ivf_perception.engine.weights import read_sidecar
from ivf_training.cli import main as train_main
from ivf_training.config import ConfigError, config_to_dict, load_config, read_recipe

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
CPU_DEFAULT_STAGES = ("s4fusion_generated", "s4fusion_generated_finetune", "s4fusion_default_rare_classes",
                      "s4fusion_default_sharpen", "s4fusion_default_polish", "s4fusion_default_fidelity",
                      "s4fusion_default_balance", "s4fusion_default_blend")


def _write(path: Path, settings: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings))
    return path


def test_mappings_merge_and_other_values_replace(tmp_path: Path) -> None:
    _write(tmp_path / "one.yaml", {"max_steps": 10, "batch_size": 4,
                                   "data": {"scale_range": [0.5, 2.0], "generated": {"train_count": 8, "val_count": 2}},
                                   "loss": {"ssim": 2.0, "gradient": 20.0}})
    _write(tmp_path / "two.yaml", {"base": "one.yaml", "max_steps": 20,
                                   "data": {"scale_range": [1.0, 1.0], "generated": {"val_count": 1}}})
    _write(tmp_path / "sub" / "three.yaml", {"base": "../two.yaml", "loss": {"ssim": 1.0}})
    assert read_recipe(tmp_path / "sub" / "three.yaml") == {
        "max_steps": 20, "batch_size": 4,
        "data": {"scale_range": [1.0, 1.0], "generated": {"train_count": 8, "val_count": 1}},
        "loss": {"ssim": 1.0, "gradient": 20.0}}
    cfg = load_config(tmp_path / "sub" / "three.yaml", ["batch_size=2"])
    assert (cfg.max_steps, cfg.batch_size, cfg.loss.ssim, cfg.loss.gradient) == (20, 2, 1.0, 20.0)
    assert cfg.data.generated.train_count == 8 and list(cfg.data.scale_range) == [1.0, 1.0]


def test_a_loss_of_another_kind_replaces_the_base_section(tmp_path: Path) -> None:
    """S4Fusion's ``ssim`` is not a CMFS setting: merging would fail; the section is replaced."""
    _write(tmp_path / "s4.yaml", {"max_steps": 5, "data": {"generated": {"train_count": 8, "val_count": 1}},
                                  "loss": {"ssim": 2.0, "seg": 0.5}})
    _write(tmp_path / "cmfs.yaml", {"base": "s4.yaml", "model": {"variant": "cmfs"}, "loss": {"kind": "cmfs"}})
    assert read_recipe(tmp_path / "cmfs.yaml")["loss"] == {"kind": "cmfs"}
    assert load_config(tmp_path / "cmfs.yaml").loss.kind == "cmfs"
    _write(tmp_path / "same.yaml", {"base": "s4.yaml", "loss": {"kind": "s4fusion", "ssim": 1.0}})
    assert read_recipe(tmp_path / "same.yaml")["loss"] == {"kind": "s4fusion", "ssim": 1.0, "seg": 0.5}


def test_a_missing_base_names_both_files(tmp_path: Path) -> None:
    child = _write(tmp_path / "child.yaml", {"base": "gone.yaml"})
    with pytest.raises(ConfigError, match=f"{child}: base recipe {tmp_path / 'gone.yaml'} not found"):
        load_config(child)


def test_bases_that_loop_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="base recipes form a loop: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        read_recipe(tmp_path / "a.yaml")


@pytest.mark.parametrize("base", [3, "", ["a.yaml"]])
def test_base_must_be_a_file_name(tmp_path: Path, base: object) -> None:
    with pytest.raises(ConfigError, match="base must name another recipe file"):
        read_recipe(_write(tmp_path / "x.yaml", {"base": base}))


def test_a_base_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping, got list"):
        read_recipe(_write(tmp_path / "x.yaml", {"base": "list.yaml"}))


def test_cpu_default_stages_each_start_from_the_one_before() -> None:
    bases = [yaml.safe_load((RECIPES / f"{name}.yaml").read_text()).get("base") for name in CPU_DEFAULT_STAGES]
    assert bases == [None, *(f"{name}.yaml" for name in CPU_DEFAULT_STAGES[:-1])]


def test_bundled_sidecar_lineage_is_what_make_train_default_runs() -> None:
    """The eight stages the bundled sidecar names are the Makefile's, in order, each with its
    recipe's step count and starting checkpoint, and each starts from the run before it, and the
    calibration after them is the Makefile's, so `make train-default` reproduces what the file says."""
    makefile = (RECIPES.parents[1] / "Makefile").read_text()
    stages = makefile.split("DEFAULT_STAGES :=")[1].split("\ntrain-default:")[0].replace("\\\n", " ").split()
    expected = []
    for recipe_name, run in (stage.split(":") for stage in stages):
        cfg = load_config(RECIPES / f"{recipe_name}.yaml")
        init_from = cfg.model.init_from  # absolute: runs/ made absolute against the cwd
        expected.append({"run": run, "recipe": f"training/recipes/{recipe_name}.yaml", "overrides": [f"name={run}"],
                         "max_steps": cfg.max_steps,
                         "started_from": "/".join(Path(init_from).parts[-3:]) if init_from else None})
    assert [e["recipe"] for e in expected] == [f"training/recipes/{name}.yaml" for name in CPU_DEFAULT_STAGES]
    *runs, calibration = read_sidecar(DEFAULT_WEIGHTS).lineage
    assert runs == expected
    calibrate_args = makefile.split("CALIBRATION :=")[1].split("\n")[0]
    assert calibration["calibration"] == "class_bias" and calibration["source"] == DEFAULT_WEIGHTS.name
    assert calibration["dataset"]["options"] == {"config": {"seed": 3}, "count": 200}
    assert "--dataset generated -o 'config={seed: 3}' -o count=200" in calibrate_args
    assert "ivf-train calibrate ivf_perception/weights/s4fusion_tiny_default.safetensors" in makefile
    for before, stage in zip(expected, expected[1:]):
        assert stage["started_from"].split("/")[0] == before["run"], stage
    assert f"ivf-train export runs/{expected[-1]['run']} --checkpoint last" in makefile


def test_the_last_stage_still_trains_what_the_bundled_sidecar_records() -> None:
    """The recipe the bundled file was trained with (sidecar ``recipe``, resolved before stages
    used ``base:``) equals what s4fusion_default_blend.yaml resolves to now, paths aside."""
    shipped = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["recipe"]
    now = config_to_dict(load_config(RECIPES / "s4fusion_default_blend.yaml", ["name=s4fusion_default_blend"]))
    # start_run pins the architecture switches the model was built with (tiny's stride-4 patches)
    assert now["model"].pop("overrides") == {"fusion_base": "adaptive_blend"}
    assert shipped["model"].pop("overrides") == {"cmsa_wiring": "all_scales", "patch_overlap": 2, "patch_size": 4,
                                                 "fusion_base": "adaptive_blend"}
    for recipe in (shipped, now):  # where the files lay on the machine that trained it
        recipe["model"]["init_from"] = Path(recipe["model"]["init_from"]).name
        recipe["out_dir"] = Path(recipe["out_dir"]).name
        for key in ("train_real", "val_real"):
            recipe["data"][key] = [Path(p).parent.name for p in recipe["data"][key]]
    assert now == shipped


def test_the_gpu_default_keeps_the_last_cpu_stage_s_loss_and_fusion_head() -> None:
    gpu = load_config(RECIPES / "s4fusion_gpu_default.yaml")
    cpu = load_config(RECIPES / "s4fusion_default_blend.yaml")
    assert gpu.loss == cpu.loss and gpu.data.generated.scene == cpu.data.generated.scene
    assert gpu.model.overrides == cpu.model.overrides == {"fusion_base": "adaptive_blend"}
    assert (gpu.model.preset, gpu.model.init_from, gpu.model.reinit, gpu.batch_size, gpu.crop) == (
        "small", None, [], 32, 192)


def test_ivf_train_config_prints_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = RECIPES / "s4fusion_default_balance.yaml"
    assert train_main(["config", str(recipe), "max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == config_to_dict(load_config(recipe, ["max_steps=7"]))
    assert printed["loss"]["gradient"] == 30.0 and printed["data"]["generated"]["train_count"] == 4000  # from bases


def test_ivf_train_config_names_a_bad_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["config", str(_write(tmp_path / "x.yaml", {"base": "gone.yaml"}))]) == 2
    assert "base recipe" in capsys.readouterr().err
