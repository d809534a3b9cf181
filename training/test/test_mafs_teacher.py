"""The MAFS distillation teacher (issue 15): trained on fused images with ``loss.kind:
fused_seg_teacher`` and distilled from in stage II, fed the way it was trained.

CPU smoke runs: the teacher recipe on generated scenes with the micro CMFS (ablation V), fused
by the bundled S4Fusion tiny; then a stage-II step of the micro MAFS with that teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ivf_perception.engine.weights import read_sidecar
from ivf_perception.models.base import FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray
from ivf_training.config import ConfigError, load_config
from ivf_training.export import export_engine_weights
from ivf_training.objectives import DistilledFusionSegObjective, FusedInputSegObjective
from ivf_training.teacher import SegmentationOnlyLoss, teacher_inputs
from ivf_training.trainer import start_run

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "training" / "recipes"
SMALL = ["data.generated.train_count=4", "data.generated.val_count=2", "data.generated.scene={height: 64, width: 80}",
         "max_steps=2", "batch_size=2", "crop=64", "val_every=2", "ckpt_every=0", "log_every=1", "progress=false",
         "device=cpu", "num_workers=0"]


def _log(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_teacher_inputs() -> None:
    fused, thermal = torch.rand(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    rgb_in, th_in = teacher_inputs(fused, thermal, "fused")
    assert rgb_in is fused
    torch.testing.assert_close(th_in, rgb_to_gray(fused))
    assert teacher_inputs(fused, thermal, "thermal")[1] is thermal
    with pytest.raises(ValueError, match="thermal_input"):
        teacher_inputs(fused, thermal, "both")


def test_segmentation_only_loss_is_cross_entropy() -> None:
    logits, labels = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    total, terms = SegmentationOnlyLoss(2.0)(FusionSegOutput(fused=torch.zeros(2, 3, 3, 3), logits=logits), labels)
    torch.testing.assert_close(total, 2.0 * torch.nn.functional.cross_entropy(logits, labels))
    assert set(terms) == {"seg_ce", "total"}


def test_teacher_recipe_needs_a_fusion_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fusion_weights"):
        load_config(RECIPES / "teacher_generated.yaml", ["loss.fusion_weights=null", *SMALL])
    cfg = load_config(RECIPES / "teacher_generated.yaml", [f"loss.fusion_weights={tmp_path / 'none.safetensors'}",
                                                          f"out_dir={tmp_path}", *SMALL])
    with pytest.raises(ConfigError, match="none.safetensors does not exist"):
        start_run(cfg)


def test_teacher_recipe_trains_on_fused_images_and_teaches_stage2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  ) -> None:
    pytest.importorskip("open_clip")
    monkeypatch.chdir(ROOT)  # the recipe names the bundled fusion weights relative to the project root
    cfg = load_config(RECIPES / "teacher_generated.yaml",
                      ["model.variant=test_cmfs", "model.preset=test", "model.clip_weights=random",
                       f"out_dir={tmp_path}", *SMALL])
    assert cfg.loss.kind == "fused_seg_teacher" and cfg.model.overrides["ablation"] == "V"
    trainer = start_run(cfg)
    objective = trainer.objective
    assert isinstance(objective, FusedInputSegObjective) and objective.thermal_input == "fused"
    # the network is trained on the frozen fusion model's output, never on the raw pair
    seen: list[torch.Tensor] = []
    trainer.model.register_forward_pre_hook(lambda _m, args: seen.append(args[1]))
    fusion_before = {k: v.clone() for k, v in objective.fusion.state_dict().items()}
    trainer.fit()
    assert all(rec["seg_ce"] > 0 for rec in _log(trainer.run_dir, "train"))
    assert _log(trainer.run_dir, "val")[-1]["mIoU"] is not None
    for k, v in objective.fusion.state_dict().items():
        torch.testing.assert_close(v, fusion_before[k])
    rgb, thermal = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        fused = objective.fusion(rgb, thermal).fused
    seen.clear()
    with torch.no_grad():
        trainer.model.eval()(*teacher_inputs(fused, thermal, "fused"))
    torch.testing.assert_close(seen[0], rgb_to_gray(fused))

    teacher_file = export_engine_weights(trainer.run_dir, tmp_path / "teacher.safetensors")
    assert read_sidecar(teacher_file).recipe["loss"]["thermal_input"] == "fused"

    stage2 = load_config(None, ["model.variant=test_mafs", "model.preset=test", "model.num_classes=9",
                                "loss.kind=mafs_stage2", f"loss.teacher_weights={teacher_file}",
                                f"out_dir={tmp_path}", "name=stage2", *SMALL])
    taught = start_run(stage2)
    assert isinstance(taught.objective, DistilledFusionSegObjective)
    assert taught.objective.teacher_input == "fused"
    taught.fit()
    assert all(rec["seg_kd"] >= 0 for rec in _log(taught.run_dir, "train"))
    assert _log(taught.run_dir, "val")[-1]["loss/seg_kd"] is not None


@pytest.mark.parametrize("dataset", ["mfnet", "fmb", "pst900", "msrs"])
def test_paper_recipes_wire_the_teacher(dataset: str) -> None:
    teacher = load_config(RECIPES / f"teacher_{dataset}.yaml")
    stage2 = load_config(RECIPES / f"mafs_stage2_{dataset}.yaml")
    assert teacher.model.variant == "cmfs" and teacher.model.preset == "paper"
    assert teacher.model.overrides["ablation"] == "V" and teacher.loss.thermal_input == "fused"  # type: ignore[union-attr]
    assert teacher.model.num_classes == stage2.model.num_classes
    assert stage2.loss.teacher_weights.endswith(f"runs/teacher_{dataset}.safetensors")  # type: ignore[union-attr]
    assert (stage2.loss.intensity, stage2.loss.gradient, stage2.loss.gradient_form,  # type: ignore[union-attr]
            stage2.loss.dwa_period) == (1.0, 1.0, "public", "step")  # type: ignore[union-attr]
