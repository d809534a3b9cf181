"""CMFS's objective, the poly schedule and text features in the shared trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from lr_helpers import lrs, optimizer
from timm.scheduler import PolyLRScheduler

from ivf_perception.engine import Engine
from ivf_perception.engine.weights import read_sidecar
from ivf_perception.models.base import FusionSegOutput
from ivf_training.cmfs_losses import DATASET_GAMMA_BETA, CMFSLoss, adjust_contrast, cmfs_fusion_terms, gamma_correct
from ivf_training.config import ConfigError, OptimConfig, TrainConfig, load_config
from ivf_training.export import export_engine_weights
from ivf_training.losses import sobel_magnitude
from ivf_training.objectives import CMFSObjective
from ivf_training.run_dir import read_run_config
from ivf_training.schedules import build_schedule
from ivf_training.trainer import Trainer, start_run

MakeConfig = Callable[..., TrainConfig]
RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"


def test_gamma_and_contrast_match_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 8, 10, generator=g)
    ir = torch.rand(2, 1, 8, 10, generator=g)
    torch.testing.assert_close(gamma_correct(rgb, 0.5), TF.adjust_gamma(rgb, 0.5, 1))
    torch.testing.assert_close(adjust_contrast(ir, 1.7), TF.adjust_contrast(ir, 1.7))
    # torchvision's gray weights are 0.2989/0.587/0.114, ours BT.601's 0.299/0.587/0.114
    torch.testing.assert_close(adjust_contrast(rgb, 1.8), TF.adjust_contrast(rgb, 1.8), atol=1e-4, rtol=0)


def test_fusion_terms_on_hand_made_images() -> None:
    rgb = torch.full((1, 3, 6, 6), 0.25)
    thermal = torch.zeros(1, 1, 6, 6)
    thermal[..., 3:] = 1.0  # a vertical edge
    gamma, beta = 0.5, 1.0
    target = torch.maximum(rgb.sqrt(), thermal.expand_as(rgb))  # 0.5 left, 1.0 right
    terms = cmfs_fusion_terms(target, rgb, thermal, gamma, beta, gradient_form="magnitude")
    assert float(terms["fus_intensity"]) == pytest.approx(0.0, abs=1e-7)
    assert float(terms["fus_gradient"]) == pytest.approx(
        float((sobel_magnitude(target) - torch.maximum(sobel_magnitude(rgb.sqrt()),
                                                       sobel_magnitude(thermal.expand_as(rgb)))).abs().mean()),
        abs=1e-7)
    # gray fused vs gray visible: no colour difference; a red fused image has one
    assert float(terms["fus_color"]) == pytest.approx(0.0, abs=1e-6)
    red = torch.zeros(1, 3, 6, 6)
    red[:, 0] = 1.0
    assert float(cmfs_fusion_terms(red, rgb, thermal, gamma, beta)["fus_color"]) > 0.1
    flat = torch.full((1, 3, 6, 6), 0.5)
    assert float(cmfs_fusion_terms(flat, rgb, thermal, gamma, beta)["fus_intensity"]) == pytest.approx(0.25, abs=1e-6)


def test_cmfs_loss_weights_and_terms() -> None:
    g = torch.Generator().manual_seed(1)
    rgb, thermal = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    fused = torch.rand(2, 3, 16, 16, generator=g, requires_grad=True)
    logits = torch.randn(2, 5, 16, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (2, 16, 16), generator=g)
    balance = torch.tensor(1.3, requires_grad=True)
    out = FusionSegOutput(fused=fused, logits=logits, aux={"moe_balance_loss": balance})
    loss_fn = CMFSLoss(gamma=0.5, beta=1.7, moe_balance=0.01)
    total, terms = loss_fn(out, rgb, thermal, labels)
    expected = (terms["seg_ce"] + 0.1 * (0.5 * terms["fus_intensity"] + 1.0 * terms["fus_color"]
                                        + 0.2 * terms["fus_gradient"]) + 0.01 * terms["moe_balance"])
    torch.testing.assert_close(total, expected)
    assert float(terms["seg_ce"]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits.detach(), labels)), rel=1e-5)
    total.backward()
    assert fused.grad is not None and logits.grad is not None and float(balance.grad) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="gamma > 0"):
        CMFSLoss(gamma=0.0)


def test_paper_gamma_beta_per_dataset() -> None:
    assert DATASET_GAMMA_BETA == {"mfnet": (0.5, 1.7), "fmb": (0.8, 1.0), "pst900": (0.5, 1.8)}


def test_warmup_poly_schedule() -> None:
    o = OptimConfig(lr_start=0.0, lr_peak=1.0, lr_end=0.0, warmup_fraction=0.091, schedule="poly", power=0.9)
    s = build_schedule(o, optimizer(1.0), 111)  # 10 warm-up steps of 111
    assert lrs(s, [0]) == [0.0] and lrs(s, [5]) == [pytest.approx(0.5)] and lrs(s, [10]) == [pytest.approx(1.0)]
    assert lrs(s, [60]) == [pytest.approx(0.5 ** 0.9)]
    assert lrs(s, [110]) == [pytest.approx(0.0)]
    values = lrs(s, range(10, 111))
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_config_selects_loss_and_schedule(make_config: MakeConfig) -> None:
    cfg = make_config("loss.kind=cmfs", "loss.gamma=0.8", "loss.beta=1.0", "optim.schedule=poly", "optim.power=1.0")
    loss = CMFSObjective.build_loss(cfg.loss)
    assert isinstance(loss, CMFSLoss) and (loss.gamma, loss.beta) == (0.8, 1.0)
    sched = build_schedule(cfg.optim, optimizer(cfg.optim.lr_peak), 100)
    assert isinstance(sched, PolyLRScheduler) and sched.power == 1.0
    with pytest.raises(ConfigError, match="loss.kind"):
        make_config("loss.kind=focal")
    with pytest.raises(ConfigError, match="optim.power must be > 0"):
        make_config("optim.power=0")
    with pytest.raises(ConfigError, match="not both"):
        make_config("model.text_features=a.safetensors", "model.clip_weights=random")


def test_text_features_are_required_and_listed(make_config: MakeConfig, tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    cfg = make_config("model.variant=test_cmfs", "model.preset=test")
    with pytest.raises(ConfigError, match="Provide one of: a precomputed feature file"):
        Trainer.from_config(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="not text-guided"):
        Trainer.from_config(make_config("model.clip_weights=random"), tmp_path / "run2")


def test_cmfs_trains_exports_and_runs_in_the_engine(make_config: MakeConfig, tmp_path: Path) -> None:
    """Two steps of the micro CMFS with the paper's objective, then export: the engine output
    equals the training model's and the text features travel with the weights."""
    pytest.importorskip("open_clip")
    cfg = make_config("model.variant=test_cmfs", "model.preset=test", "model.clip_weights=random", "loss.kind=cmfs",
                      "optim.schedule=poly", "max_steps=2", "ckpt_every=2", "crop=64",
                      "model.overrides={moe_mamba_bidirectional: true}")
    trainer = start_run(cfg, "cmfs")
    trainer.fit()
    assert trainer.model.has_text_features
    log = (trainer.run_dir / "log.jsonl").read_text()
    assert "moe_balance" in log and "fus_color" in log
    out = export_engine_weights(trainer.run_dir, tmp_path / "cmfs.safetensors")
    # the switches the model was built with are pinned in the run config and the sidecar
    assert read_run_config(trainer.run_dir).model.overrides["moe_mamba_bidirectional"] is True
    assert read_sidecar(out).model_args["moe_mamba_bidirectional"] is True
    engine = Engine("auto", weights=out, device="cpu")
    torch.testing.assert_close(engine.model.text_features, trainer.model.text_features.cpu())
    trainer.model.eval()
    rgb, thermal = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        expected = trainer.model(rgb, thermal).logits
        got = engine.model(rgb, thermal).logits
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("cmfs_*.yaml")))
def test_cmfs_recipes_load(recipe: str) -> None:
    cfg = load_config(RECIPES / recipe)
    assert cfg.model.variant == "cmfs" and cfg.loss.kind == "cmfs" and cfg.optim.schedule == "poly"


def test_exported_weights_do_not_need_the_imagenet_file(make_config: MakeConfig, tmp_path: Path) -> None:
    """A run initialised from a VMamba-T checkpoint exports weights that load without that file."""
    pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from ivf_perception.models import build_model

    imagenet = tmp_path / "vssm_tiny.safetensors"
    branch = build_model("test_cmfs").encoder_rgb.state_dict()
    save_file({k: v.contiguous() for k, v in branch.items()}, str(imagenet))
    cfg = make_config("model.variant=test_cmfs", "model.preset=test", "model.clip_weights=random",
                      f"model.overrides={{encoder_weights: {imagenet}}}", "loss.kind=cmfs", "max_steps=1",
                      "ckpt_every=1", "crop=64")
    trainer = start_run(cfg, "cmfs_init")
    trainer.fit()
    imagenet.unlink()
    out = export_engine_weights(trainer.run_dir, tmp_path / "cmfs.safetensors")
    engine = Engine("auto", weights=out, device="cpu")
    assert "encoder_weights" not in engine.info.model_args
