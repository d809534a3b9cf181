"""``ivf-train export --onnx``: the ONNX graph matches the engine's model; unexportable models
are refused with a message before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ivf_perception.engine import Engine
from ivf_perception.export import OnnxExportError, export_onnx
from ivf_training.cli import main
from ivf_training.config import TrainConfig
from ivf_training.trainer import start_run

MakeConfig = Callable[..., TrainConfig]


@pytest.fixture
def run_dir(make_config: MakeConfig) -> Path:
    trainer = start_run(make_config("max_steps=2", "val_every=0", "ckpt_every=0", "tensorboard=false"))
    trainer.fit()
    return trainer.run_dir


def test_export_round_trip_with_onnx(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    weights = tmp_path / "out" / "standin.safetensors"
    assert main(["export", str(run_dir), "--out", str(weights), "--onnx", "--onnx-size", "48x80"]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().out
    onnx_path = weights.with_suffix(".onnx")
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["variant"] == "test_training_standin" and len(json.loads(meta["classes"])) == 9

    engine = Engine("auto", weights=weights, device="cpu")  # what a robot would load
    generator = torch.Generator().manual_seed(5)
    rgb, thermal = torch.rand(1, 3, 48, 80, generator=generator), torch.rand(1, 1, 48, 80, generator=generator)
    with torch.no_grad():
        expected = engine.model(rgb, thermal)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    fused, logits = session.run(["fused", "logits"], {"rgb": rgb.numpy(), "thermal": thermal.numpy()})
    torch.testing.assert_close(torch.from_numpy(fused), expected.fused, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-5, rtol=1e-4)


def test_unexportable_model_gets_a_message(run_dir: Path, tmp_path: Path, standin: type[torch.nn.Module],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(standin, "_exportable", False)
    weights = tmp_path / "w.safetensors"
    assert main(["export", str(run_dir), "--out", str(weights), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ivf-train: error: test_training_standin cannot be exported to ONNX")
    assert "without --onnx" in err
    assert "\n" not in err and not list(tmp_path.glob("w.*"))  # refused before writing anything


def test_size_must_fit_the_input_multiple(standin: type[torch.nn.Module], tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="use 52x80"):
        export_onnx(standin(), tmp_path / "x.onnx", height=50, width=80)
