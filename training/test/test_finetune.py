"""Fine-tuning from the bundled weights (issue 14 part 9): ``model.init_from: default``, the
frozen segmentation head, the no-labels warning, the step-0 validation and the README's
walk-through bag → extract → fine-tune → export → replay (the node's pipeline on a bag)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ivf_perception.cli.main import main as perception_main
from ivf_perception.engine import DEFAULT_WEIGHTS
from ivf_perception.engine.weights import WeightsInfo, save_weights
from ivf_perception.models import build_model
from ivf_perception.models.registry import pinned_args
from ivf_training.build import has_labels, load_initial_weights, resolve_init_from, warn_if_unlabelled
from ivf_training.cli import main as train_main
from ivf_training.config import ConfigError, load_config
from ivf_training.trainer import Trainer, resume_run, start_run

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "s4fusion_finetune_bag.yaml"
BUNDLED_HEAD = "model.overrides={fusion_base: adaptive_blend}"
"""The bundled weights' fusion head (their sidecar's model_args): a fine-tune must build it."""


def _head(trainer: Trainer) -> nn.Module:
    head = trainer.model.seg_head
    assert isinstance(head, nn.Module)
    return head


def test_init_from_default_loads_the_bundled_weights_exactly(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.init_from=default", "max_steps=1", "data.generated.train_count=1",
                             "best_metric=loss/total", "best_mode=min"])
    assert cfg.model.init_from == "default"  # not made a path relative to the cwd
    assert resolve_init_from("default") == DEFAULT_WEIGHTS
    model = build_model("s4fusion", preset="tiny", num_classes=9, fusion_base="adaptive_blend")
    load_initial_weights(model, resolve_init_from(cfg.model.init_from))
    bundled = load_file(str(DEFAULT_WEIGHTS))
    state = model.state_dict()
    assert set(state) == set(bundled)
    for name, tensor in bundled.items():
        assert torch.equal(state[name], tensor), name


def test_freeze_seg_head_and_step0_validation(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "model.variant=s4fusion", "model.preset=tiny", "model.num_classes=9", "model.init_from=default", BUNDLED_HEAD,
        "model.freeze_seg_head=true", "data.generated.train_count=4", "data.generated.val_count=1",
        "data.generated.scene={height: 64, width: 64}", "max_steps=2", "batch_size=2", "crop=64",
        "val_every=0", "ckpt_every=0", "log_every=1", "progress=false", "tensorboard=false",
        "optim.lr_peak=1e-2", "optim.lr_start=1e-2", f"out_dir={tmp_path}", "name=ft", "best_metric=loss/total",
        "best_mode=min",
    ])
    trainer = start_run(cfg)
    head_before = {k: v.clone() for k, v in _head(trainer).state_dict().items()}
    rest_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("seg_head.")}
    result = trainer.fit()
    head_after = _head(trainer).state_dict()
    for name, tensor in head_before.items():  # parameters and BatchNorm statistics
        assert torch.equal(head_after[name], tensor), name
    rest_after = trainer.model.state_dict()
    changed = [k for k, v in rest_before.items() if v.is_floating_point() and not torch.equal(rest_after[k], v)]
    assert len(changed) > len(rest_before) // 2
    assert not _head(trainer).training  # stays in eval mode although the model trains
    records = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in records if r["kind"] == "val"]
    assert val_steps == [0, 2]
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["start_val"] == result["start_val"] and "loss/total" in summary["start_val"]
    assert summary["change"]["loss/total"] == pytest.approx(
        summary["last_val"]["loss/total"] - summary["start_val"]["loss/total"])


def test_freeze_without_a_head_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.num_classes=0", "model.freeze_seg_head=true", "max_steps=1",
                             "data.generated.train_count=2", f"out_dir={tmp_path}", "name=x", "best_metric=loss/total"])
    with pytest.raises(ConfigError, match="freeze_seg_head"):
        start_run(cfg)


def test_no_labels_warning(caplog: pytest.LogCaptureFixture) -> None:
    unlabelled = {"kind": "mix", "parts": [{"kind": "extract", "samples": 8, "labelled": 0},
                                           {"kind": "real_pairs", "pairs": 4}]}
    assert not has_labels(unlabelled)
    assert has_labels({"kind": "mix", "parts": [*unlabelled["parts"], {"kind": "generated", "count": 2}]})
    with caplog.at_level(logging.WARNING, logger="ivf_training.build"):
        assert warn_if_unlabelled(unlabelled, 9, frozen_head=False)
    assert "no labels" in caplog.text and "model.freeze_seg_head: true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ivf_training.build"):
        assert not warn_if_unlabelled({"kind": "folder", "labelled": 3}, 9, frozen_head=False)
        assert not warn_if_unlabelled(unlabelled, 0, frozen_head=False)  # fusion-only model: nothing to say
    assert caplog.text == ""


def test_walkthrough_bag_extract_finetune_export_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's commands in order, in-process (same argument parsing as the console scripts)."""
    monkeypatch.chdir(tmp_path)
    assert perception_main(["generate", "--bag", "drive", "--count", "4", "--size", "64x64"]) == 0
    assert perception_main(["extract", "drive", "--out", "frames", "--no-progress"]) == 0
    assert train_main(["run", str(RECIPE), "name=ft",
                       "max_steps=1", "batch_size=2", "crop=64", "progress=false", "tensorboard=false"]) == 0
    out = capsys.readouterr().out
    assert "validation at step 0 -> end: fusion/Qabf" in out
    summary = json.loads((tmp_path / "runs" / "ft" / "summary.json").read_text())
    assert "fusion/Qabf" in summary["change"]
    assert train_main(["export", "runs/ft", "--out", "ft.safetensors"]) == 0
    assert perception_main(["replay", "drive", "--weights", "ft.safetensors", "--out", "replayed",
                            "--no-progress", "--no-fusion-metrics"]) == 0
    metrics = json.loads((tmp_path / "replayed" / "metrics.json").read_text())
    assert metrics


def test_unlabelled_folder_run_warns_and_keeps_the_frozen_head(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """An extracted bag without a label topic looks like this: vi/ and ir/ only."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for side, channels in (("vi", 3), ("ir", 1)):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (64, 64, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze()).save(tmp_path / "pairs" / side / f"{i}.png")
    cfg = load_config(None, [
        "model.variant=s4fusion", "model.preset=tiny", "model.num_classes=9", "model.init_from=default", BUNDLED_HEAD,
        "model.freeze_seg_head=true", "data.kind=folder", f"data.train_folders=[{tmp_path / 'pairs'}]",
        "max_steps=1", "batch_size=2", "crop=64", "val_every=0", "ckpt_every=0", "progress=false",
        "tensorboard=false", f"out_dir={tmp_path}", "name=ft", "best_metric=loss/total", "best_mode=min",
    ])
    with caplog.at_level(logging.WARNING, logger="ivf_training.build"):
        trainer = start_run(cfg)
    assert "the training data has no labels" in caplog.text and "segmentation head is frozen" in caplog.text
    head_before = {k: v.clone() for k, v in _head(trainer).state_dict().items()}
    trainer.fit()
    for name, tensor in _head(trainer).state_dict().items():
        assert torch.equal(tensor, head_before[name]), name


def test_resumed_fine_tune_keeps_its_step0_validation(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "model.variant=s4fusion", "model.preset=tiny", "model.num_classes=9", "model.init_from=default", BUNDLED_HEAD,
        "data.generated.train_count=4", "data.generated.val_count=1", "data.generated.scene={height: 64, width: 64}",
        "max_steps=2", "batch_size=2", "crop=64", "val_every=0", "ckpt_every=1", "progress=false",
        "tensorboard=false", f"out_dir={tmp_path}", "name=ft", "best_metric=loss/total", "best_mode=min",
    ])
    first = start_run(cfg).fit(stop_at_step=1)
    assert not (tmp_path / "ft" / "summary.json").exists()  # not finished yet
    result = resume_run(tmp_path / "ft").fit()
    assert result["start_val"] == first["start_val"] and result["start_val"]
    records = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 2]
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["start_val"] == first["start_val"]


def _average_head_weights(tmp_path: Path, model_args: dict[str, object] | None = None) -> tuple[nn.Module, Path]:
    """Engine weights of a micro S4Fusion whose fusion head corrects the pixel average; the
    sidecar records ``model_args`` (default: every switch pinned, as exports write it)."""
    torch.manual_seed(0)
    source = build_model("test_s4fusion", num_classes=3)
    for p in source.parameters():
        p.data.normal_(0, 0.1)
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=3,
                       model_args=pinned_args("test_s4fusion", source) if model_args is None else model_args)
    return source, save_weights(source.state_dict(), tmp_path / "average.safetensors", info)


def test_reinit_keeps_the_named_module_fresh_and_loads_the_rest_exactly(tmp_path: Path) -> None:
    """Stage 8 of the CPU default: an average-base file into the adaptive-blend head, which
    restarts at its own initialisation (the pixel maximum) while every other tensor is the file's."""
    source, path = _average_head_weights(tmp_path)
    torch.manual_seed(1)
    model = build_model("test_s4fusion", num_classes=3, fusion_base="adaptive_blend")
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fusion_head.")}
    load_initial_weights(model, path, reinit=["fusion_head"])
    state, loaded = model.state_dict(), source.state_dict()
    for name, tensor in state.items():
        expected = fresh[name] if name.startswith("fusion_head.") else loaded[name]
        assert torch.equal(tensor, expected), name
    assert state["fusion_head.blend.bias"][-1] == 1.0  # sharpness 1: not the file's average head


def test_reinit_names_must_be_submodules_and_the_rest_must_fit(tmp_path: Path) -> None:
    _, path = _average_head_weights(tmp_path)
    model = build_model("test_s4fusion", num_classes=3, fusion_base="adaptive_blend")
    with pytest.raises(ConfigError, match="model.reinit: not submodules of the model: 'fusion_heads'"):
        load_initial_weights(model, path, reinit=["fusion_heads"])
    # Without reinit the blend layer has no tensors in the file: the error names the switch to set.
    with pytest.raises(ConfigError, match=r"(?s)fusion_base='average' \(set model.overrides.fusion_base "
                                          r"to match\).*fusion_head\.blend\.weight"):
        load_initial_weights(model, path)


def test_reinit_without_init_from_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.reinit \['fusion_head'\] needs model.init_from"):
        load_config(None, ["model.reinit=[fusion_head]", "max_steps=1"])


def test_a_sidecar_written_before_a_switch_gets_the_hint_too(tmp_path: Path) -> None:
    """A file from before fusion_base existed (no such key in its model_args) was trained with
    the legacy value, so the error names that value as well."""
    _, path = _average_head_weights(tmp_path, {"patch_size": 4, "patch_overlap": 2, "cmsa_wiring": "all_scales"})
    model = build_model("test_s4fusion", num_classes=3, fusion_base="adaptive_blend")
    with pytest.raises(ConfigError, match=r"fusion_base='average' \(set model.overrides.fusion_base to match\)"):
        load_initial_weights(model, path)
