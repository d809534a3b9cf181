"""Trainer: schedule, parameter groups, learning, checkpoints/resume, export, CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from lr_helpers import lrs, optimizer
from safetensors.torch import load_file

from ivf_perception.engine.weights import load_weights
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.metrics import ConfusionAccumulator, segmentation_scores
from ivf_perception.models import list_models
from ivf_training.checkpoint import CheckpointError
from ivf_training.cli import build_parser, main
from ivf_training.config import ConfigError, OptimConfig, TrainConfig, config_to_dict
from ivf_training.export import export_engine_weights
from ivf_training.losses import FusionSegLoss
from ivf_training.optim import param_groups
from ivf_training.schedules import build_schedule
from ivf_training.trainer import Trainer, resume_run, start_run

STANDIN = "test_training_standin"  # registered by conftest.py
MakeConfig = Callable[..., TrainConfig]


def _s4fusion_registered() -> bool:
    try:
        return "s4fusion" in list_models()
    except ImportError:  # the family is still being written
        return False


def test_warmup_cosine_schedule() -> None:
    o = OptimConfig(lr_start=3e-4, lr_peak=1.5e-3, lr_end=6e-4, warmup_fraction=0.1)  # 10 warm-up steps of 101
    s = build_schedule(o, optimizer(o.lr_peak), 101)
    assert lrs(s, [0]) == [pytest.approx(3e-4)]
    assert lrs(s, [5]) == [pytest.approx(9e-4)]
    assert lrs(s, [10]) == [pytest.approx(1.5e-3)]
    assert lrs(s, [55]) == [pytest.approx((1.5e-3 + 6e-4) / 2)]
    assert lrs(s, [100]) == [pytest.approx(6e-4)]
    values = lrs(s, range(10, 101))
    assert all(a >= b for a, b in zip(values, values[1:]))
    no_warmup = OptimConfig(lr_start=1.0, lr_peak=2.0, lr_end=0.5, warmup_fraction=0.0)
    assert lrs(build_schedule(no_warmup, optimizer(2.0), 5), [0]) == [pytest.approx(2.0)]


def test_param_groups_exclude_norms_biases_and_flagged(standin: type[torch.nn.Module]) -> None:
    model = standin()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.gate) not in decay_ids  # flagged _no_weight_decay
    assert id(model.stem[1].weight) not in decay_ids  # GroupNorm weight
    assert id(model.stem[0].bias) not in decay_ids
    assert id(model.stem[0].weight) in decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _fixed_batch_loss(trainer: Trainer) -> float:
    batch = torch.utils.data.default_collate([trainer.val_set[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.model(batch["rgb"][..., :64, :64], batch["thermal"][..., :64, :64])
        loss, _ = trainer.loss_fn(out, batch["rgb"][..., :64, :64], batch["thermal"][..., :64, :64],
                                  batch["labels"][..., :64, :64])
    trainer.model.train()
    return float(loss)


def test_training_steps_reduce_the_loss_and_write_the_run(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config("max_steps=25", "ckpt_every=0", "val_every=0", "log_every=5", "optim.lr_peak=5e-3")
    trainer = start_run(cfg)
    before = _fixed_batch_loss(trainer)
    result = trainer.fit()
    after = _fixed_batch_loss(trainer)
    assert after < before
    run = trainer.run_dir
    assert yaml.safe_load((run / "config.yaml").read_text()) == config_to_dict(cfg)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_lines = [rec for rec in lines if rec["kind"] == "train"]
    assert [rec["step"] for rec in train_lines] == [5, 10, 15, 20, 25]
    assert ({"total", "seg_ce", "fus_intensity", "fus_ssim", "fus_gradient", "fus_color", "lr", "grad_norm"}
            <= set(train_lines[0]))
    val = [rec for rec in lines if rec["kind"] == "val"]
    assert len(val) == 1 and val[0]["step"] == 25 and "mIoU" in val[0] and "fusion/Qabf" in val[0]
    assert result["step"] == 25 and result["best_step"] == 25
    assert (run / "ckpt" / "last.safetensors").is_file() and (run / "ckpt" / "best.safetensors").is_file()
    data = json.loads((run / "data.json").read_text())
    assert data["train"]["kind"] == "generated" and data["train"]["count"] == 64
    with pytest.raises(ConfigError, match="already holds a run"):
        start_run(make_config())


def test_resume_matches_uninterrupted_run(make_config: MakeConfig, tmp_path: Path) -> None:
    # 12 scenes / batch 4 = 3 batches per epoch: stopping at step 4 resumes mid-epoch 1
    common = ("data.generated.train_count=12", "max_steps=7", "val_every=3", "ckpt_every=3")
    full = start_run(make_config(*common, root=tmp_path / "a"))
    full.fit()

    first = start_run(make_config(*common, root=tmp_path / "b"))
    first.fit(stop_at_step=4)
    run_dir = first.run_dir
    del first
    state = torch.load(run_dir / "ckpt" / "last.state.pt", weights_only=True)  # no pickled objects
    assert state["step"] == 4
    resumed = resume_run(run_dir)
    assert resumed.step == 4
    resumed.fit()

    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for idx in sa:
        assert torch.equal(sa[idx]["exp_avg_sq"], sb[idx]["exp_avg_sq"])

    def train_losses(run: Path) -> list[tuple[int, float]]:
        recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["total"]) for r in recs if r["kind"] == "train"]

    assert train_losses(full.run_dir) == train_losses(run_dir)


def test_corrupt_checkpoint_is_refused_pointing_to_previous(make_config: MakeConfig, tmp_path: Path) -> None:
    trainer = start_run(make_config())  # 6 steps, checkpoints at 3 and 6
    trainer.fit()
    ckpt = trainer.run_dir / "ckpt"
    assert load_file(str(ckpt / "prev.safetensors")).keys() == load_file(str(ckpt / "last.safetensors")).keys()
    raw = bytearray((ckpt / "last.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (ckpt / "last.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as exc:
        resume_run(trainer.run_dir)
    msg = str(exc.value)
    assert "checksum differs" in msg and "prev.safetensors (step 3) is intact" in msg and "--checkpoint prev" in msg
    assert resume_run(trainer.run_dir, "prev").step == 3
    # the newer, broken last.* and the step-6 best are set aside, not deleted and not exported
    assert not (ckpt / "last.safetensors").exists() and (ckpt / "stale-after-step3-last.safetensors").exists()
    assert not (ckpt / "best.json").exists() and (ckpt / "stale-step6-best.json").exists()

    (ckpt / "prev.state.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="prev.state.pt is corrupt"):
        resume_run(trainer.run_dir, "prev")


def test_export_round_trip(make_config: MakeConfig, tmp_path: Path) -> None:
    trainer = start_run(make_config("max_steps=3"))
    trainer.fit()
    out = export_engine_weights(trainer.run_dir, tmp_path / "w" / "standin.safetensors")
    state, info = load_weights(out)
    best = load_file(str(trainer.run_dir / "ckpt" / "best.safetensors"))
    assert state.keys() == best.keys() and all(torch.equal(state[k], best[k]) for k in state)
    assert info.variant == STANDIN and info.preset == "tiny" and info.num_classes == 9
    assert info.classes == list(MFNET_CLASSES) and info.palette == MFNET_PALETTE
    assert info.input_size == [64, 64]
    assert info.recipe["model"]["variant"] == STANDIN and info.recipe["max_steps"] == 3
    assert info.data["train"]["kind"] == "generated" and info.training_domain == ["generated scenes"]
    assert info.metrics["checkpoint"] == "best.safetensors" and info.metrics["step"] == 3 and "mIoU" in info.metrics

    last = export_engine_weights(trainer.run_dir, tmp_path / "last.safetensors", checkpoint="last")
    state, _ = load_weights(last)
    live = trainer.model.state_dict()
    assert all(torch.equal(state[k], live[k]) for k in live)


def test_export_records_the_architecture_switches(make_config: MakeConfig, tmp_path: Path) -> None:
    """Exports write a family's later-added switches (S4Fusion: patch geometry, CMSA wiring,
    fusion base) into the sidecar even when the recipe leaves them to the preset, so the weight loader never
    mistakes the file for one written before the switches and gives it the legacy values."""
    trainer = start_run(make_config("model.variant=test_s4fusion", "model.preset=test", "max_steps=1"))
    trainer.fit()
    _, info = load_weights(export_engine_weights(trainer.run_dir, tmp_path / "s4.safetensors"))
    assert info.model_args == {"patch_size": 4, "patch_overlap": 2, "cmsa_wiring": "all_scales",
                               "fusion_base": "average"}


class _NaNLoss(FusionSegLoss):
    """The real loss, made non-finite (a diverging run)."""

    def forward(self, output, rgb, thermal, labels=None):  # noqa: ANN001, ANN201 - same signature as the base
        total, terms = super().forward(output, rgb, thermal, labels)
        total = total * float("nan")
        return total, {**terms, "total": total.detach()}


def test_non_finite_loss_stops_with_a_message(make_config: MakeConfig, tmp_path: Path) -> None:
    trainer = start_run(make_config())
    trainer.loss_fn = _NaNLoss()
    with pytest.raises(FloatingPointError, match="non-finite at step 0"):
        trainer.fit()
    assert not (trainer.run_dir / "ckpt" / "last.safetensors").exists()  # nothing non-finite was saved


def test_learns_segmentation_above_chance(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config(
        "max_steps=150", "data.generated.train_count=256", "data.generated.val_count=8",
        "optim.lr_start=1e-3", "optim.lr_peak=1e-2", "optim.lr_end=1e-3", "loss.fusion=0.1",
        "data.scale_range=[1.0, 1.0]", "ckpt_every=0", "val_every=0", "log_every=50",
    )
    trainer = start_run(cfg)
    result = trainer.fit()
    # chance: the best constant prediction on the same validation scenes
    labels = [trainer.val_set[i]["labels"] for i in range(len(trainer.val_set))]
    chance = 0.0
    for c in range(9):
        acc = ConfusionAccumulator(9)
        for lab in labels:
            acc.update(torch.full_like(lab, c), lab)
        chance = max(chance, segmentation_scores(acc.compute())["mIoU"] or 0.0)
    miou = result["last_val"]["mIoU"]
    assert miou > max(0.05, 5 * chance), (miou, chance)


@pytest.mark.skipif(not _s4fusion_registered(), reason="s4fusion is not registered yet")
def test_s4fusion_tiny_trains_two_steps(make_config: MakeConfig, tmp_path: Path) -> None:
    cfg = make_config("model.variant=s4fusion", "model.preset=tiny", "max_steps=2", "batch_size=2",
                      "ckpt_every=0", "val_every=0", "data.generated.val_count=1")
    trainer = start_run(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    assert result["step"] == 2
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert math.isfinite(result["last_val"]["loss/total"])
    state, info = load_weights(export_engine_weights(trainer.run_dir, tmp_path / "s4.safetensors"))
    assert info.variant == "s4fusion" and info.preset == "tiny"


# ---------------------------------------------------------------------------------------------- CLI


def _write_recipe(make_config: MakeConfig, tmp_path: Path) -> Path:
    cfg = make_config("max_steps=4", "ckpt_every=2")
    data = config_to_dict(cfg)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_run_stop_resume_export(make_config: MakeConfig, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _write_recipe(make_config, tmp_path)
    assert main(["run", str(recipe), "name=cli", "--stop-at-step", "2"]) == 0
    run_dir = tmp_path / "runs" / "cli"
    assert "run directory:" in capsys.readouterr().out
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at step 2" in out and "finished at step 4" in out
    weights = tmp_path / "cli.safetensors"
    assert main(["export", str(run_dir), "--out", str(weights)]) == 0
    assert load_weights(weights)[1].metrics["step"] == 4


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "{recipe}", "optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["run", "{tmp}/missing.yaml"], "configuration file not found"),
        (["run", "{recipe}", "model.variant=no_such_model"], "Unknown model (no_such_model)"),
        (["run", "{recipe}", "data.train_real=[{tmp}/nowhere]"], "does not exist"),
        (["resume", "{tmp}/nowhere"], "is not a run directory"),
        (["export", "{tmp}/nowhere", "--out", "{tmp}/x.safetensors"], "is not a run directory"),
    ],
)
def test_cli_user_errors_are_one_line(make_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], expected: str) -> None:
    recipe = _write_recipe(make_config, tmp_path)
    args = [a.format(recipe=recipe, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ivf-train: error: ") and expected in err and "\n" not in err and "Traceback" not in err


def test_cli_parser_is_built_on_demand() -> None:
    parser = build_parser()
    args = parser.parse_args(["export", "runs/x", "--out", "w.safetensors", "--checkpoint", "last"])
    assert args.command == "export" and args.checkpoint == "last"
    with pytest.raises(SystemExit):
        parser.parse_args(["resume", "runs/x", "--checkpoint", "best"])
