"""EMA of the weights: the update rule, and that validation, best, export and resume use it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ivf_perception.engine.weights import load_weights
from ivf_training.config import ConfigError, TrainConfig
from ivf_training.ema import ModelEMA
from ivf_training.export import export_engine_weights
from ivf_training.trainer import resume_run, start_run

MakeConfig = Callable[..., TrainConfig]


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_update_rule_with_warmup() -> None:
    model = _model()
    ema = ModelEMA(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the start weighs little
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    expected = 0.1 * start["0.weight"] + 0.9 * model[0].weight
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    for _ in range(20):
        ema.update(model)
    assert ema.updates == 21 and ema.current_decay() == 0.5  # warmed up: the configured decay
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training

    restored = ModelEMA(_model(), decay=0.9)
    restored.load_checkpoint_state(ema.checkpoint_state())
    assert restored.updates == 21 and restored.decay == 0.5
    torch.testing.assert_close(restored.module[0].weight, ema.module[0].weight)


def test_decay_is_checked(make_config: MakeConfig) -> None:
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        ModelEMA(_model(), decay=1.0)
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        make_config("ema_decay=1.5")


def test_validation_best_export_and_resume_use_the_average(make_config: MakeConfig, tmp_path: Path) -> None:
    common = ("ema_decay=0.8", "data.generated.train_count=12", "max_steps=6", "val_every=0", "ckpt_every=3",
              "tensorboard=false")
    full = start_run(make_config(*common, root=tmp_path / "a"))
    full.fit()
    assert full.ema is not None and full.eval_model is full.ema.module
    averaged = full.ema.module.state_dict()
    assert any(not torch.equal(averaged[k], v) for k, v in full.model.state_dict().items())

    best = load_file(str(full.run_dir / "ckpt" / "best.safetensors"))  # validated once, at the end
    assert full.best_step == 6 and all(torch.equal(best[k], averaged[k]) for k in averaged)
    state, _ = load_weights(export_engine_weights(full.run_dir, tmp_path / "last.safetensors", checkpoint="last"))
    assert all(torch.equal(state[k], averaged[k]) for k in averaged)  # export takes the EMA, not the raw weights

    first = start_run(make_config(*common, root=tmp_path / "b"))
    first.fit(stop_at_step=3)
    resumed = resume_run(first.run_dir)
    resumed.fit()
    assert resumed.ema is not None and resumed.ema.updates == 6
    for key, value in resumed.ema.module.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    assert resumed.last_val == full.last_val  # validated with the same averaged weights


def test_timm_based_average_equals_the_previous_update_rule() -> None:
    """``ModelEMA`` (on timm's ``ModelEmaV3``) gives, bit for bit, what the previous implementation
    computed: ``E.lerp_(W, 1 − d)`` per floating-point tensor with ``d = min(decay, (1+n)/(10+n))``,
    integer buffers copied."""
    model = _model()
    ema = ModelEMA(model, decay=0.7)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(15):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.randn(4, 2))  # BatchNorm running statistics move too
        d = min(0.7, (1.0 + n) / (10.0 + n))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                reference[key].lerp_(value, 1.0 - d)
            else:
                reference[key].copy_(value)
        ema.update(model)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, reference[key]), key
