"""ONNX round trip of UP-Fusion (dynamo exporter, onnxruntime): selected channel indices first,
then the image (spec §1.11, §5.3).

The graph carries the top-k indices of SCPM and of the four TCPM SE selections as extra outputs,
so a backend that resolves a near-tie differently is caught as an index mismatch rather than as
an image difference of unclear origin. Uses torch.onnx directly: the package's own ONNX export
lives in the training package (and ivf_perception.export.onnx once merged).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ivf_perception.models import build_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow


class WithSelections(nn.Module):
    """fused, logits, then every selection's indices, as graph outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.forward_features(rgb, thermal)
        out = self.model.forward_head(feats, rgb, thermal)
        return (out.fused, out.logits, *feats.selections.values())


@pytest.mark.parametrize("height, width", [(16, 24), (32, 40)])
def test_onnx_runtime_selects_the_same_channels_and_gives_the_same_image(tmp_path: Path, height: int,
                                                                          width: int) -> None:
    torch.manual_seed(0)
    model = build_model("test_upfusion", num_classes=3).eval()
    model.set_text_embedding(torch.randn(512))
    wrapper = WithSelections(model).eval()
    g = torch.Generator().manual_seed(0)
    example = (torch.rand(1, 3, height, width, generator=g), torch.rand(1, 1, height, width, generator=g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, example, dynamo=True, input_names=["rgb", "thermal"], verbose=False)
    path = tmp_path / "upfusion.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)  # a fresh input, not the traced one
    rgb, thermal = torch.rand(1, 3, height, width, generator=g), torch.rand(1, 1, height, width, generator=g)
    with torch.no_grad():
        expected = wrapper(rgb, thermal)
    got = session.run(None, {"rgb": rgb.numpy(), "thermal": thermal.numpy()})
    names = list(model.forward_features(rgb, thermal).selections)
    assert len(got) == 2 + len(names) == 7
    for name, ours, theirs in zip(names, expected[2:], got[2:]):
        np.testing.assert_array_equal(theirs, ours.numpy(), err_msg=f"{name} selected other channels")
    fused_ref = expected[0].numpy()
    mse = float(np.mean((got[0] - fused_ref) ** 2))
    assert mse == 0.0 or 10 * np.log10(1.0 / mse) > 60.0  # image-level tolerance once indices agree
    np.testing.assert_allclose(got[1], expected[1].numpy(), atol=1e-4, rtol=1e-3)


def test_package_export_at_a_fixed_size_matches_pytorch(tmp_path: Path) -> None:
    """The package's exporter (what `ivf-train export --onnx` and the onnxruntime backend use).

    Fixed size only: with dynamic H×W the 224² resize feeding SCPM's tower is exported from a
    symbolic size and onnxruntime's fused image differed by 0.019 at 32×48 on this micro model
    (a changed selection is the likely cause, spec §1.11; not yet traced to its operator).
    """
    from ivf_perception.export.onnx import export_onnx

    torch.manual_seed(1)
    model = build_model("test_upfusion", num_classes=3).eval()
    model.set_text_embedding(torch.randn(512))
    check = export_onnx(model, tmp_path / "up.onnx", height=32, width=40)
    assert (tmp_path / "up.onnx").is_file() and max(check.max_abs_diff.values()) < 1e-4


def test_refused_export_names_the_smallest_selection_margin(tmp_path: Path) -> None:
    """A mismatch (forced here by a zero tolerance) is reported with the model's smallest top-k
    score margin on the check input, the number that tells a flipped near-tie (spec §1.11) from
    an operator exported wrong."""
    from ivf_perception.export.onnx import OnnxExportError, _random_inputs, export_onnx

    torch.manual_seed(1)
    model = build_model("test_upfusion", num_classes=3).eval()
    model.set_text_embedding(torch.randn(512))
    margin = model.selection_margin(*_random_inputs(32, 40, seed=1))
    with pytest.raises(OnnxExportError, match=f"smallest score margin of {margin:.2g} on this input"):
        export_onnx(model, tmp_path / "up.onnx", height=32, width=40, atol=0.0, rtol=0.0)
    assert not (tmp_path / "up.onnx").exists()
