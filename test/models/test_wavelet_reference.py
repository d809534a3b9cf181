"""The Haar DWT/IDWT op against recorded reference outputs, and its ONNX export.

``data/haar_dwt_reference.npz`` was recorded on 2026-12-04 from commit c1fbc80, where
``ivf_perception.models.ops.wavelet`` ran ``pytorch_wavelets`` 1.3.0 (``AFB2D``/``SFB2D``, mode
"zero", PyWavelets' Haar filters) after the same replicate padding to a multiple of ``2**levels``.
Per case it holds a float32 input ``x`` (seeded ``torch.randn``), ``levels``, the coefficients
``yl``/``yh{j}`` of ``dwt2(x, levels)`` and ``mixed`` = ``idwt2(2 * yl, [(0.5 + j) * yh[j]],
size=x.shape[-2:])`` (scaled bands, so the inverse is checked on more than a round trip).
The sizes include odd ones and 1×1, which exercise the padding and the cropping.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ivf_perception.models.ops import dwt2, idwt2

REFERENCE = Path(__file__).parent / "data" / "haar_dwt_reference.npz"
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}


def _cases() -> list[str]:
    with np.load(REFERENCE) as data:
        return sorted(key.removesuffix("_x") for key in data.files if key.endswith("_x"))


def _case(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key.removeprefix(f"{name}_"): data[key] for key in data.files if key.startswith(f"{name}_")}


def test_reference_fixture_is_small_and_complete() -> None:
    assert REFERENCE.stat().st_size < 200_000
    assert len(_cases()) >= 4


@pytest.mark.parametrize("name", _cases())
def test_dwt2_matches_the_recorded_reference(name: str) -> None:
    case = _case(name)
    levels = int(case["levels"])
    yl, yh = dwt2(torch.from_numpy(case["x"]), levels)
    torch.testing.assert_close(yl, torch.from_numpy(case["yl"]), **TOLERANCE)
    assert len(yh) == levels
    for j, high in enumerate(yh):
        torch.testing.assert_close(high, torch.from_numpy(case[f"yh{j}"]), **TOLERANCE)


@pytest.mark.parametrize("name", _cases())
def test_idwt2_matches_the_recorded_reference(name: str) -> None:
    case = _case(name)
    levels = int(case["levels"])
    yl = torch.from_numpy(case["yl"]) * 2.0
    yh = [torch.from_numpy(case[f"yh{j}"]) * (0.5 + j) for j in range(levels)]
    out = idwt2(yl, yh, size=case["x"].shape[-2:])
    torch.testing.assert_close(out, torch.from_numpy(case["mixed"]), **TOLERANCE)


class RoundTrip(nn.Module):
    """DWT → scaled bands → IDWT, the path CMFS's wavelet branch takes through the op."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yl, yh = dwt2(x, self.levels)
        return idwt2(yl * 2.0, [h * 0.5 for h in yh], size=x.shape[-2:])


@pytest.mark.parametrize("shape, levels", [((1, 3, 8, 12), 2), ((2, 2, 15, 22), 3)])
def test_round_trip_exports_to_onnx_and_runs_in_onnxruntime(shape: tuple[int, ...], levels: int) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model = RoundTrip(levels).eval()
    x = torch.randn(*shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-5, rtol=1e-5)
