"""Every registered ``test_*`` variant exports to one dynamic-size ONNX file (through the
``export-onnx`` command), and ONNX Runtime equals PyTorch on it at two input sizes: fused max
|diff| <= 1e-4, labels equal on >= 99.9 % of the pixels.

The micro presets keep this affordable on CI's CPU (every export traces the whole network); the
paper presets' export times are measured in the README, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.cli.export_onnx import main
from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.export import read_onnx_metadata
from ivf_perception.export.onnx import file_sha256
from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
from ivf_perception.models import build_model, list_models
from ivf_perception.models.registry import model_entrypoint

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")

# The package's own micro variants (training's tests register a stand-in of their own).
VARIANTS = [n for n in list_models("test_*") if model_entrypoint(n).__module__.startswith("ivf_perception.")]


def _weights(variant: str, folder: Path) -> Path:
    torch.manual_seed(7)
    model = build_model(variant, num_classes=len(MFNET_CLASSES))
    # the sidecar records the constructor arguments, as exports do: a sidecar without a switch
    # added later means weights saved before it (registry.with_legacy_args)
    info = WeightsInfo(variant=variant, preset=model.preset, num_classes=len(MFNET_CLASSES),
                       model_args=model.config()["model_args"], classes=list(MFNET_CLASSES),
                       palette=list(MFNET_PALETTE))
    return save_weights(model.state_dict(), folder / f"{variant}.safetensors", info)


def _export(weights: Path, model: torch.nn.Module, sizes: list[tuple[int, int]]) -> dict[tuple[int, int], Path]:
    """The ONNX file serving each size, written by the CLI: one dynamic file where the model
    allows it, else one fixed-size file per size."""
    m = model.input_multiple
    if getattr(model, "_dynamic_onnx", True):
        assert main(["--weights", str(weights), "--dynamic", "--height", str(2 * m), "--width", str(3 * m)]) == 0
        return dict.fromkeys(sizes, weights.with_name(f"{weights.stem}-dynamic.onnx"))
    for h, w in sizes:
        assert main(["--weights", str(weights), "--height", str(h), "--width", str(w)]) == 0
    return {(h, w): weights.with_name(f"{weights.stem}-{h}x{w}.onnx") for h, w in sizes}


def test_every_test_variant_is_covered() -> None:
    assert set(VARIANTS) == {"test_s4fusion", "test_cmfs", "test_mafs", "test_upfusion", "test_tesg"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_equals_torch_at_two_sizes(variant: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    weights = _weights(variant, tmp_path)
    model, _ = build_model_from_weights(weights)
    m = model.input_multiple
    sizes = [(3 * m, 2 * m), (2 * m, 5 * m)]  # a dynamic file was traced at neither
    files = _export(weights, model, sizes)
    assert "wrote " in capsys.readouterr().out
    generator = torch.Generator().manual_seed(11)
    for height, width in sizes:
        meta = read_onnx_metadata(files[height, width])
        assert meta["variant"] == variant and meta["input_size"] in ("dynamic", f"{height}x{width}")
        assert meta["classes"] == list(MFNET_CLASSES) and meta["weights_sha256"] == file_sha256(weights)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(files[height, width]), options, providers=["CPUExecutionProvider"])
        rgb = torch.rand(1, 3, height, width, generator=generator)
        thermal = torch.rand(1, 1, height, width, generator=generator)
        with torch.no_grad():
            expected = model(rgb, thermal)
        fused, logits = session.run(["fused", "logits"], {"rgb": rgb.numpy(), "thermal": thermal.numpy()})
        assert fused.shape == (1, 3, height, width) and logits.shape == (1, len(MFNET_CLASSES), height, width)
        assert np.abs(fused - expected.fused.numpy()).max() <= 1e-4
        agree = (logits.argmax(1) == expected.logits.numpy().argmax(1)).mean()
        assert agree >= 0.999, f"{variant} at {height}x{width}: labels agree on {agree:.4%} of pixels"


def test_cli_refuses_bad_input_with_one_line(test_weights: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    weights = str(test_weights)
    cases = [
        ([str(tmp_path / "missing.safetensors"), "--dynamic"], "missing.safetensors: weights file not found"),
        ([weights, "--height", "40", "--width", "48"], "not divisible by s4fusion's input_multiple 16"),
        ([weights, "--height", "48"], "give both --height and --width"),
        ([weights], "give --height and --width for a fixed-size file"),
        ([weights, "--dynamic"], "cannot be exported to ONNX with a dynamic input size"),
    ]
    for argv, message in cases:
        assert main(["--weights", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not list(test_weights.parent.glob("*.onnx"))
