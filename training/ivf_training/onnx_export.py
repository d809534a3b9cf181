"""ONNX export of a trained model, checked against PyTorch with onnxruntime.

``ivf-train export RUN_DIR --out W.safetensors --onnx`` writes ``W.onnx`` next to the engine
weights. The graph has inputs ``rgb`` (1×3×H×W) and ``thermal`` (1×1×H×W), float in [0, 1], and
outputs ``fused`` (1×3×H×W) and, for segmenting models, ``logits`` (1×K×H×W); H×W is fixed at
export (default: the training crop), because some families (S4Fusion's patch folding) only
export with static shapes; pad or resize camera images to it as the Engine does. The model's
variant, preset, classes and palette are stored in the ONNX ``metadata_props``.

Why the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): the TorchScript exporter is
deprecated, fails on S4Fusion's ``col2im`` and resamples differently from PyTorch in
``interpolate`` (differences of 1e-2 on the test model), while the dynamo graph matches to 1e-6.

Models whose ``_exportable`` flag is False (CMFS: ``rfft2``/``irfft2``) are refused with a
message before anything is written. After export the file is run by onnxruntime on a fresh
random input and compared with the PyTorch model; a mismatch beyond the tolerance deletes the
file and raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ivf_perception.errors import IvfPerceptionError

__all__ = ["OnnxExportError", "OnnxCheck", "export_onnx"]


class OnnxExportError(IvfPerceptionError, ValueError):
    """The model cannot be exported to ONNX, or the exported graph disagrees with PyTorch."""


@dataclass(frozen=True)
class OnnxCheck:
    """The onnxruntime check of an exported file.

    Attributes:
        path: the ``.onnx`` file.
        height, width: the input size the graph is fixed to.
        max_abs_diff: per output name, the largest |onnxruntime − PyTorch|.
    """

    path: Path
    height: int
    width: int
    max_abs_diff: dict[str, float]


class _TupleOutputs(nn.Module):
    """The model with a tuple output (ONNX graphs have no dataclasses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(rgb, thermal)
        return (out.fused,) if out.logits is None else (out.fused, out.logits)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given loggers to WARNING: the graph optimiser logs every pass at INFO."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _cause(exc: BaseException) -> str:
    """The root cause's type and first line: the exporter's own message is pages long."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    first = next((line for line in str(root).splitlines() if line.strip()), "")
    return f"{type(root).__name__}: {first[:300]}"


def export_onnx(model: nn.Module, path: str | Path, *, height: int, width: int,
                metadata: Mapping[str, object] | None = None, atol: float = 1e-4, rtol: float = 1e-3) -> OnnxCheck:
    """Export ``model`` to ``path`` for ``height``×``width`` inputs and check it with onnxruntime.

    Args:
        model: a fusion(+segmentation) model on the CPU.
        path: destination ``.onnx`` file.
        height, width: input size; divisible by the model's ``input_multiple``.
        metadata: stored as ONNX ``metadata_props`` (values JSON-encoded unless strings).
        atol, rtol: the check passes when |ort − torch| ≤ atol + rtol·|torch| everywhere.

    Raises:
        OnnxExportError: the model is not exportable (``_exportable`` False), the size does not
            fit ``input_multiple``, onnx/onnxruntime/onnxscript are missing, the exporter fails,
            or onnxruntime's outputs differ from PyTorch's beyond the tolerance.
    """
    path = Path(path)
    name = getattr(model, "variant", "") or type(model).__name__
    if not getattr(model, "_exportable", True):
        raise OnnxExportError(
            f"{name} cannot be exported to ONNX (its _exportable flag is False: it uses operations such as "
            "FFTs that the ONNX path does not cover); export the engine weights without --onnx and run them "
            "with the PyTorch Engine"
        )
    multiple = int(getattr(model, "input_multiple", 1))
    if height % multiple or width % multiple:
        h, w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        raise OnnxExportError(f"ONNX input size {height}x{width} is not divisible by {name}'s input_multiple "
                              f"{multiple}; use --onnx-size {h}x{w}")
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; import here to fail early)
    except ImportError as exc:
        raise OnnxExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}); "
                              "pip install -c requirements/constraints.txt onnx onnxscript onnxruntime") from exc
    wrapper = _TupleOutputs(model).eval()
    generator = torch.Generator().manual_seed(0)
    example = (torch.rand(1, 3, height, width, generator=generator),
               torch.rand(1, 1, height, width, generator=generator))
    with torch.no_grad():
        outputs = wrapper(*example)
    output_names = ["fused", "logits"][: len(outputs)]
    try:
        with warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir"):
            warnings.simplefilter("ignore")  # the exporter warns about every fallback it takes
            program = torch.onnx.export(wrapper, example, dynamo=True, input_names=["rgb", "thermal"],
                                        output_names=output_names, verbose=False)
    except torch.onnx.OnnxExporterError as exc:
        raise OnnxExportError(f"{name} did not export to ONNX at {height}x{width} ({_cause(exc)}); "
                              "the engine weights are unaffected") from exc
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    try:
        check = _compare(onnxruntime, tmp, wrapper, output_names, height, width, atol, rtol)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return OnnxCheck(path, height, width, check)


def _compare(ort: Any, path: Path, wrapper: nn.Module, output_names: list[str], height: int, width: int,
             atol: float, rtol: float) -> dict[str, float]:
    """Run the file on a fresh input (not the traced one) and compare every output with PyTorch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    rgb = torch.rand(1, 3, height, width, generator=generator)
    thermal = torch.rand(1, 1, height, width, generator=generator)
    with torch.no_grad():
        expected = wrapper(rgb, thermal)
    got = session.run(output_names, {"rgb": rgb.numpy(), "thermal": thermal.numpy()})
    diffs = {}
    for name, ref, out in zip(output_names, expected, got):
        ref_np = ref.numpy()
        diffs[name] = float(np.abs(out - ref_np).max())
        if not np.allclose(out, ref_np, atol=atol, rtol=rtol):
            raise OnnxExportError(
                f"onnxruntime's {name!r} differs from PyTorch's by up to {diffs[name]:.3g} "
                f"(tolerance {atol} + {rtol}·|x|); the ONNX file was not written"
            )
    return diffs
