"""MAFS in the shared trainer: stage I masked reconstruction, the stage I → II hand-over, stage II
with and without a teacher, the SGD/exponential schedule, 90° rotations and the config errors.

Every run uses the micro ``test_mafs`` preset on 64×64 crops of generated 64×80 scenes and a
few steps, so the file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from lr_helpers import lrs, optimizer
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ivf_perception.engine import Engine
from ivf_perception.models import build_model
from ivf_perception.models.base import FusionSegOutput
from ivf_training.augment import JointAugment
from ivf_training.config import ConfigError, TrainConfig, load_config
from ivf_training.export import export_engine_weights
from ivf_training.mafs_losses import MAFSStage1Loss, MAFSStage2Loss
from ivf_training.objectives import DistilledFusionSegObjective, MaskedReconstructionObjective, load_teacher
from ivf_training.optim import build_optimizer, param_groups
from ivf_training.schedules import WarmupExpScheduler, build_schedule
from ivf_training.trainer import Trainer, resume_run, start_run

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
STAGE1 = ("encoder", "fuser", "recon_head")
STAGE2 = ("encoder", "fuser", "fusion_head", "seg_head")


def _config(root: Path, name: str, *overrides: str) -> TrainConfig:
    base = [
        "model.variant=test_mafs", "model.preset=test", "model.num_classes=9",
        "data.generated.train_count=8", "data.generated.val_count=2", "data.generated.scene={height: 64, width: 80}",
        "max_steps=2", "batch_size=2", "crop=64", "val_every=0", "ckpt_every=0", "log_every=1", "progress=false",
        "device=cpu", "seed=3", f"out_dir={root}", f"name={name}",
    ]
    return load_config(None, [*base, *overrides])


def _stage1(root: Path, name: str = "stage1", *overrides: str) -> TrainConfig:
    return _config(root, name, "loss.kind=mafs_stage1", "best_metric=loss/total", "best_mode=min", *overrides)


def _stage2(root: Path, name: str, init_from: Path, *overrides: str) -> TrainConfig:
    return _config(root, name, "loss.kind=mafs_stage2", f"model.init_from={init_from}", *overrides)


def _log(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [rec for rec in lines if rec["kind"] == kind]


def _changed_modules(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = model.state_dict()
    return {k.split(".")[0] for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One micro stage I run shared by the tests below (its weights before and after)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mafs")
    trainer = start_run(_stage1(root, "stage1", "data.rot90=true"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    return {"root": root, "trainer": trainer, "before": before, "result": result,
            "best": trainer.run_dir / "ckpt" / "best.safetensors"}


# --------------------------------------------------------------------------------------------
# stage I


def test_stage1_trains_only_the_reconstruction_path(stage1_run: dict[str, Any]) -> None:
    trainer: Trainer = stage1_run["trainer"]
    model = trainer.model
    assert _changed_modules(stage1_run["before"], model) == set(STAGE1)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    expected = {id(p) for name in STAGE1 for p in getattr(model, name).parameters()}
    assert optimised == expected
    assert not any(p.requires_grad for name in ("fusion_head", "seg_head") for p in getattr(model, name).parameters())


def test_stage1_logs_reconstruction_terms_and_validates_the_loss_only(stage1_run: dict[str, Any]) -> None:
    trainer: Trainer = stage1_run["trainer"]
    train = _log(trainer.run_dir, "train")
    assert [rec["step"] for rec in train] == [1, 2]
    for rec in train:
        assert {"total", "rec_rgb", "rec_thermal", "rec_rgb_intensity", "rec_thermal_gradient", "grad_norm"} <= set(rec)
        assert rec["total"] == pytest.approx(rec["rec_rgb"] + rec["rec_thermal"], rel=1e-5)
    (val,) = _log(trainer.run_dir, "val")
    assert set(val) - {"kind", "step"} == {f"loss/{k}" for k in (
        "total", "rec_rgb", "rec_rgb_intensity", "rec_rgb_gradient",
        "rec_thermal", "rec_thermal_intensity", "rec_thermal_gradient")}
    assert stage1_run["result"]["best_metric"] == "loss/total" and stage1_run["best"].is_file()
    # validation masks are fixed: the same model scores the same loss twice
    assert trainer.validate()["loss/total"] == pytest.approx(trainer.validate()["loss/total"], rel=1e-6)
    assert "mIoU" not in trainer.validation_metric_names()


def test_stage1_masks_hide_patches_of_each_modality_independently() -> None:
    seen: dict[str, torch.Tensor] = {}

    class Recorder(nn.Module):
        """Records the masked inputs and reconstructs zeros."""

        def reconstruct(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seen["rgb"], seen["thermal"] = rgb, thermal
            return torch.zeros_like(rgb, requires_grad=True), torch.zeros_like(thermal, requires_grad=True)

    def loss_fn(output: FusionSegOutput, rgb: torch.Tensor, thermal: torch.Tensor, mask_rgb: torch.Tensor,
                mask_thermal: torch.Tensor) -> dict[str, torch.Tensor]:
        seen["mask_rgb"], seen["mask_thermal"] = mask_rgb, mask_thermal
        return {"total": output.aux["recon_rgb"].sum() + output.aux["recon_thermal"].sum()}

    rgb, thermal = torch.rand(2, 3, 64, 96) + 0.1, torch.rand(2, 1, 64, 96) + 0.1
    objective = MaskedReconstructionObjective(patch=32, ratio_range=(0.5, 0.5))
    path = objective.training_module(Recorder())  # what the trainer (DDP-)wraps: forward = reconstruct
    objective.train_step(path, loss_fn, rgb, thermal, torch.zeros(2, 64, 96, dtype=torch.long), nullcontext)
    for name in ("rgb", "thermal"):
        mask = seen[f"mask_{name}"]
        assert mask.shape == (2, 1, 64, 96) and mask.dtype == torch.bool
        assert (mask.float().mean((1, 2, 3)) == 0.5).all()  # 3 of 6 patches hidden in each sample
        cells = mask[:, :, ::32, ::32]
        torch.testing.assert_close(mask, cells.repeat_interleave(32, 2).repeat_interleave(32, 3))
        assert (seen[name] == 0).eq(mask.expand_as(seen[name])).all()  # hidden pixels are 0, no others
    assert not torch.equal(seen["mask_rgb"], seen["mask_thermal"])


def _stage1_ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank: a stage I step on its own batch through the DDP-wrapped training module."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank
        model = build_model("test_mafs", num_classes=9)
        objective = MaskedReconstructionObjective()
        objective.prepare(model)
        ddp = DistributedDataParallel(objective.training_module(model))
        torch.manual_seed(rank + 1)  # each rank its own images and masks
        rgb, thermal = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
        loss, _ = objective.train_step(ddp, MAFSStage1Loss(), rgb, thermal, torch.zeros(2, 64, 64, dtype=torch.long),
                                       nullcontext)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        torch.save(grads, Path(out_dir) / f"grad{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_stage1_gradients_are_synchronised_under_ddp(tmp_path: Path) -> None:
    """DDP hooks only ``forward``: the reconstruction path must be the wrapped module's forward,
    or each rank would keep its own gradients and the replicas would drift apart silently."""
    mp.spawn(_stage1_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grad{r}.pt", weights_only=True) for r in range(2))
    assert g0.numel() > 0
    torch.testing.assert_close(g0, g1)


def test_stage1_needs_a_staged_model(tmp_path: Path) -> None:
    cfg = _stage1(tmp_path, "standin", "model.variant=test_s4fusion")
    with pytest.raises(ConfigError, match="STAGE_MODULES"):
        Trainer.from_config(cfg, tmp_path / "run")


# --------------------------------------------------------------------------------------------
# stage I → stage II


def test_stage2_starts_from_stage1_and_trains_fusion_and_segmentation(stage1_run: dict[str, Any]) -> None:
    stage1_state = load_file(str(stage1_run["best"]))
    trainer = start_run(_stage2(stage1_run["root"], "handover", stage1_run["best"]))
    model = trainer.model
    for key, value in model.state_dict().items():
        if key.startswith(("encoder.", "fuser.", "recon_head.")):
            torch.testing.assert_close(value, stage1_state[key], rtol=0, atol=0, msg=key)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for name in STAGE2 for p in getattr(model, name).parameters()}
    assert not any(p.requires_grad for p in model.recon_head.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit()
    assert _changed_modules(before, model) == set(STAGE2)


def test_stage2_with_and_without_teacher(stage1_run: dict[str, Any], tmp_path: Path) -> None:
    root = stage1_run["root"]
    plain = start_run(_stage2(root, "no_teacher", stage1_run["best"], "val_every=2"))
    plain.fit()
    assert all("seg_kd" not in rec for rec in _log(plain.run_dir, "train"))
    assert "loss/seg_kd" not in _log(plain.run_dir, "val")[-1]
    for rec in _log(plain.run_dir, "train"):
        assert {"seg_ohem", "seg_aux", "seg_binary", "seg_boundary", "fus_intensity", "fus_gradient",
                "fusion", "segmentation", "dwa_fusion", "dwa_segmentation"} <= set(rec)

    # the teacher: the run above, exported as engine weights like `ivf-train export` does
    teacher_file = export_engine_weights(plain.run_dir, tmp_path / "teacher.safetensors")
    taught = start_run(_stage2(root, "teacher", stage1_run["best"], "val_every=2",
                               f"loss.teacher_weights={teacher_file}"))
    teacher = taught.objective.teacher
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    taught.fit()
    assert all(rec["seg_kd"] >= 0 for rec in _log(taught.run_dir, "train"))
    assert _log(taught.run_dir, "val")[-1]["loss/seg_kd"] is not None
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_teacher_segments_the_detached_fused_image() -> None:
    seen: dict[str, torch.Tensor] = {}

    class Teacher(nn.Module):
        input_multiple = 1
        num_classes = 9

        def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
            seen["rgb"], seen["thermal"] = rgb, thermal
            return FusionSegOutput(fused=rgb, logits=torch.zeros(rgb.shape[0], 9, *rgb.shape[-2:]))

    torch.manual_seed(0)
    model = build_model("test_mafs", num_classes=9).train()
    objective = DistilledFusionSegObjective(Teacher())
    objective.prepare(model)
    rgb, thermal = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    labels = torch.randint(0, 9, (2, 64, 64))
    loss, terms = objective.train_step(model, MAFSStage2Loss(), rgb, thermal, labels, nullcontext)
    assert loss.requires_grad and "seg_kd" in terms and not seen["rgb"].requires_grad
    with torch.no_grad():
        fused = model(rgb, thermal).fused  # train mode again: the same batch statistics
    torch.testing.assert_close(seen["rgb"], fused)
    assert torch.equal(seen["thermal"], thermal)


def test_stage2_dwa_history_survives_resume(stage1_run: dict[str, Any]) -> None:
    trainer = start_run(_stage2(stage1_run["root"], "resume", stage1_run["best"], "max_steps=4"))
    trainer.fit(stop_at_step=3)
    assert int(trainer.loss_fn.dwa.periods) == 3
    resumed = resume_run(trainer.run_dir)
    for key, value in trainer.loss_fn.dwa.state_dict().items():
        assert torch.equal(resumed.loss_fn.dwa.state_dict()[key], value), key
    state = torch.load(trainer.run_dir / "ckpt" / "last.state.pt", weights_only=True)
    assert set(state["objective"]) == {"dwa"}


# --------------------------------------------------------------------------------------------
# optimiser and schedule


def test_exponential_schedule_values() -> None:
    s = WarmupExpScheduler(optimizer(1e-3), warmup_t=10, warmup_lr_init=1e-4, steps_per_epoch=20, gamma=0.9)
    assert lrs(s, [0, 5]) == [pytest.approx(1e-4), pytest.approx(5.5e-4)]
    assert lrs(s, [10]) == [pytest.approx(1e-3)]
    assert lrs(s, [30]) == [pytest.approx(1e-3 * 0.9)]
    assert lrs(s, [50]) == [pytest.approx(1e-3 * 0.81)]
    assert lrs(s, [20]) == [pytest.approx(1e-3 * 0.9 ** 0.5)]
    values = lrs(s, range(10, 201))
    assert all(a > b for a, b in zip(values, values[1:]))


def test_sgd_with_exponential_decay_from_the_config(tmp_path: Path) -> None:
    cfg = _stage1(tmp_path, "sgd", "optim.name=sgd", "optim.schedule=exp", "optim.lr_peak=1e-3",
                  "optim.warmup_fraction=0", "optim.gamma_decay=0.5", "optim.weight_decay=5e-4", "max_steps=3")
    assert cfg.optim.momentum == 0.9
    sched = build_schedule(cfg.optim, optimizer(cfg.optim.lr_peak), 3, steps_per_epoch=4)
    assert isinstance(sched, WarmupExpScheduler) and lrs(sched, range(3)) == pytest.approx(
        [1e-3, 1e-3 * 0.5 ** 0.25, 1e-3 * 0.5 ** 0.5])
    trainer = start_run(cfg)
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 5e-4]
    trainer.fit()
    # 8 scenes / batch 2 = 4 steps per epoch
    assert [rec["lr"] for rec in _log(trainer.run_dir, "train")] == pytest.approx(
        [1e-3, 1e-3 * 0.5 ** 0.25, 1e-3 * 0.5 ** 0.5])
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        build_schedule(cfg.optim, optimizer(cfg.optim.lr_peak), 3)


def test_adamw_stays_the_default() -> None:
    model = build_model("test_mafs")
    cfg = load_config(None, ["max_steps=1", "data.generated.train_count=4", "data.generated.val_count=2"])
    assert cfg.optim.name == "adamw" and cfg.optim.schedule == "warmup_cosine"
    assert isinstance(build_optimizer(cfg.optim.name, param_groups(model, 0.01), 1e-3), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="adamw or sgd"):
        build_optimizer("lion", param_groups(model, 0.01), 1e-3)


# --------------------------------------------------------------------------------------------
# augmentation


def test_rot90_turns_all_arrays_together() -> None:
    h = w = 16
    labels = torch.arange(h * w).reshape(h, w) % 7  # no symmetry: every turn differs
    labels[0, :3] = 6
    sample = {"rgb": (labels / 6.0).expand(3, h, w).clone(), "thermal": (1 - labels / 6.0)[None].clone(),
              "labels": labels}
    aug = JointAugment(h, scale_range=(1.0, 1.0), hflip=False, rot90=True)
    turns = set()
    for seed in range(24):
        out = aug(sample, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out["rgb"], (out["labels"] / 6.0).expand(3, h, w))
        torch.testing.assert_close(out["thermal"], (1 - out["labels"] / 6.0)[None])
        k = next(k for k in range(4) if torch.equal(out["labels"], torch.rot90(labels, k)))
        turns.add(k)
    assert turns == {0, 1, 2, 3}


def test_rot90_needs_a_square_crop() -> None:
    with pytest.raises(ValueError, match="rot90 needs a square crop"):
        JointAugment(64, crop_width=96, rot90=True)
    JointAugment(64, crop_width=64, rot90=True)
    with pytest.raises(ConfigError, match="data.rot90 needs a square crop"):
        load_config(None, ["max_steps=1", "data.generated.train_count=4", "data.generated.val_count=2", "crop=64",
                           "crop_width=96", "data.rot90=true"])


# --------------------------------------------------------------------------------------------
# configuration errors and recipes


def test_missing_teacher_file_is_named(stage1_run: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "teacher.safetensors"
    cfg = _stage2(tmp_path, "x", stage1_run["best"], f"loss.teacher_weights={missing}")
    with pytest.raises(ConfigError, match=f"loss.teacher_weights: {missing} does not exist"):
        start_run(cfg)
    assert not (tmp_path / "x").exists()


def test_teacher_must_segment_the_same_classes(tmp_path: Path) -> None:
    path = tmp_path / "five.safetensors"
    from ivf_perception.engine.weights import WeightsInfo, save_weights

    save_weights(build_model("test_s4fusion", num_classes=5).state_dict(), path,
                 WeightsInfo(variant="test_s4fusion", preset="test", num_classes=5))
    with pytest.raises(ConfigError, match="segments 5 classes but model.num_classes is 9"):
        load_teacher(path, 9)
    teacher = load_teacher(path, 5)
    assert isinstance(teacher, nn.Module) and not teacher.training
    (tmp_path / "five.json").unlink()
    with pytest.raises(ConfigError, match="cannot be used as a teacher: .*sidecar"):
        load_teacher(path, 5)


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.kind=focal"], "loss.kind must be one of s4fusion, cmfs, mafs_stage1, mafs_stage2"),
    (["loss.kind=mafs_stage1"], "set best_metric: loss/total and best_mode: min"),
    (["loss.kind=s4fusion", "loss.teacher_weights=t.safetensors"], "mafs_stage2 only"),
    (["loss.kind=mafs_stage2", "model.num_classes=0", "best_metric=fusion/Qabf"], "num_classes must be > 0"),
    (["loss.kind=mafs_stage1", "best_metric=loss/total", "loss.mask_ratio=[0.6, 0.4]"], "loss.mask_ratio"),
    (["loss.kind=mafs_stage2", "loss.kd_temperature=0"], "loss.kd_temperature must be > 0"),
    (["loss.kind=mafs_stage2", "loss.ohem_thresh=1.5"], "loss.ohem_thresh"),
    (["optim.momentum=1.0"], "optim.momentum"),
    (["optim.gamma_decay=0"], "optim.gamma_decay"),
    (["optim.name=lion"], "optim.name must be one of adamw, sgd"),
])
def test_config_errors(overrides: list[str], message: str) -> None:
    base = ["max_steps=1", "data.generated.train_count=4", "data.generated.val_count=2"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])


def test_teacher_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["max_steps=1", "data.generated.train_count=4", "data.generated.val_count=2",
                             "loss.kind=mafs_stage2", "loss.teacher_weights=w/t.safetensors"])
    assert cfg.loss.teacher_weights == str(tmp_path / "w" / "t.safetensors")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("mafs_*.yaml")))
def test_mafs_recipes_load(recipe: str) -> None:
    cfg = load_config(RECIPES / recipe)
    stage1 = "stage1" in recipe
    assert cfg.model.variant == "mafs" and cfg.loss.kind == ("mafs_stage1" if stage1 else "mafs_stage2")
    assert cfg.data.rot90 and cfg.data.hflip and cfg.crop_width is None
    if stage1:
        assert (cfg.best_metric, cfg.best_mode) == ("loss/total", "min")
    else:
        stage1_name = yaml.safe_load((RECIPES / recipe.replace("stage2", "stage1")).read_text())["name"]
        assert cfg.model.init_from.endswith(f"{stage1_name}/ckpt/best.safetensors")
    if "generated" in recipe:
        assert cfg.model.preset == "small"
        return
    dataset = recipe.removesuffix(".yaml").split("_")[-1]
    o = cfg.optim
    assert cfg.model.preset == "paper" and cfg.data.kind == dataset
    assert (o.name, o.lr_peak, o.momentum, o.schedule) == ("sgd", 1e-3, 0.9, "exp")
    assert (cfg.crop, cfg.batch_size, cfg.epochs) == (256, 4, 100 if stage1 else 400)
    assert cfg.model.num_classes == {"mfnet": 9, "msrs": 9, "pst900": 5, "fmb": 15}[dataset]
    assert ("trunk_weights" in cfg.model.overrides) == stage1  # stage II inherits the trunks from stage I


def test_bundled_s4fusion_teaches_the_generated_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(RECIPES.parents[1])  # recipes name files relative to the project root
    cfg = load_config(RECIPES / "mafs_stage2_generated.yaml")
    teacher = load_teacher(cfg.loss.teacher_weights, cfg.model.num_classes)
    assert Engine(teacher, device="cpu").variant == "s4fusion"


def test_stage1_run_is_not_exported(stage1_run: dict[str, Any], tmp_path: Path) -> None:
    """A stage-I run has untrained fusion and segmentation heads: export refuses it."""
    from ivf_training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="stage-I .* untrained"):
        export_engine_weights(stage1_run["trainer"].run_dir, tmp_path / "stage1.safetensors")
    assert not (tmp_path / "stage1.safetensors").exists()
