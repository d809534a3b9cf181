"""A guided model (TeSG) exports with its guidance as two more ONNX inputs (``export-onnx
--guidance``): ONNX Runtime equals PyTorch with guidance at two image sizes and two token counts;
the fallback export (no --guidance) is covered by test_export_variants.py's sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.cli.export_onnx import main
from ivf_perception.engine import Engine, WeightsError
from ivf_perception.engine.weights import WeightsInfo, build_model_from_weights, save_weights
from ivf_perception.export import OnnxExportError, export_onnx, read_onnx_metadata
from ivf_perception.guidance import Guidance
from ivf_perception.models import build_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")


def test_guided_export_takes_mask_and_text_tokens(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model("test_tesg", num_classes=3)
    model.set_fallback_text(torch.randn_like(model.fallback_text))
    info = WeightsInfo(variant="test_tesg", preset="test", num_classes=3)
    weights = save_weights(model.state_dict(), tmp_path / "tesg.safetensors", info)
    assert main(["--weights", str(weights), "--dynamic", "--height", "16", "--width", "24", "--guidance"]) == 0
    path = tmp_path / "tesg-dynamic-guided.onnx"
    meta = read_onnx_metadata(path)
    assert meta["guidance_inputs"] == '{"mask": "1x1xHxW", "text_tokens": "1xLx16"}'
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "thermal", "mask", "text_tokens"]
    net, _ = build_model_from_weights(weights)
    g = torch.Generator().manual_seed(9)
    for (h, w), tokens in (((24, 32), 6), ((16, 40), 11)):
        rgb, thermal = torch.rand(1, 3, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)
        mask, text = (torch.rand(1, 1, h, w, generator=g) > 0.5).float(), torch.randn(1, tokens, 16, generator=g)
        with torch.no_grad():
            expected = net(rgb, thermal, guidance=Guidance(mask, text))
            fallback = net(rgb, thermal)
        fused, logits = session.run(["fused", "logits"], {"rgb": rgb.numpy(), "thermal": thermal.numpy(),
                                                          "mask": mask.numpy(), "text_tokens": text.numpy()})
        assert np.abs(fused - expected.fused.numpy()).max() <= 1e-4
        assert np.abs(logits - expected.logits.numpy()).max() <= 1e-3
        assert np.abs(fused - fallback.fused.numpy()).max() > 1e-4  # the graph is the guided one
    with pytest.raises(WeightsError, match="is a guided export"):
        Engine("auto", weights=path, device="cpu", backend="onnxruntime")


def test_guidance_export_of_an_unguided_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="takes no guidance; export it without --guidance"):
        export_onnx(build_model("test_s4fusion", num_classes=3), tmp_path / "x.onnx", height=16, width=16,
                    guidance=True)
    assert not (tmp_path / "x.onnx").exists()
