"""The exporter's graph clean-up (:func:`ivf_perception.export.onnx._optimize`): constants are
folded and dead nodes removed as onnxscript's optimiser does, but onnxscript's two-output
``slice_split_rule`` is left out (its matcher lists the whole graph for every Slice, quadratic
in the graph size: most of the paper presets' export time). Outputs must not change."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ivf_perception.export.onnx import _optimize

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")


class Slices(nn.Module):
    """Two slices of one tensor (what slice_split_rule would merge into a Split) and a weight
    transform that only depends on parameters (what constant folding removes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a_log = nn.Parameter(torch.linspace(-1.0, 1.0, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = -torch.exp(self.a_log)
        return x[..., :3] * a[:3] + x[..., 3:].sum(-1, keepdim=True) * a[3:].sum()


def _export(model: nn.Module, x: torch.Tensor) -> Any:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False)


def test_cleanup_folds_constants_like_onnxscripts_optimiser_and_keeps_outputs() -> None:
    from onnxscript.optimizer import optimize_ir

    model = Slices().eval()
    x = torch.randn(2, 5, 8)
    program = _export(model, x)
    before = [n.op_type for n in program.model_proto.graph.node]
    _optimize(program)
    after = [n.op_type for n in program.model_proto.graph.node]
    assert "Exp" in before and "Exp" not in after  # -exp(a_log) folded into a constant
    assert len(after) < len(before) and after.count("Slice") == 2
    reference = _export(model, x)
    optimize_ir(reference.model, num_iterations=1, onnx_shape_inference=False)
    assert after == [n.op_type for n in reference.model_proto.graph.node]
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-6, atol=1e-6)
