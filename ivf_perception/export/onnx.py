"""ONNX export of a fusion(+segmentation) model, checked against PyTorch with onnxruntime.

The graph has inputs ``rgb`` (B×3×H×W) and ``thermal`` (B×1×H×W), float in [0, 1], and outputs
``fused`` (B×3×H×W) and, for segmenting models, ``logits`` (B×K×H×W). H×W is either fixed at
export or dynamic (any multiple of the model's ``input_multiple``); a consumer pads or resizes
camera images to what the file accepts, as the Engine does. What a consumer needs to interpret
the outputs (variant, preset, class table, palette, input multiple, the source weights' hash,
the size) is stored in the ONNX ``metadata_props`` (:func:`onnx_metadata`,
:func:`read_onnx_metadata`).

Why the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): the TorchScript exporter is
deprecated, fails on S4Fusion's ``col2im`` and resamples differently from PyTorch in
``interpolate`` (differences of 1e-2 on the test model), while the dynamo graph matches to 1e-6.
While it runs, the models choose their export formulations (the selective scan's loop-free
form, CMFS's DFT as matrix products): see :func:`ivf_perception.models.ops.selective_scan` and
:mod:`ivf_perception.models.layers.fft_filter`.

Models whose ``_exportable`` flag is False are refused with a message before anything is
written. After export the file is run by onnxruntime on fresh random inputs (at two sizes for
a dynamic file) and compared with the PyTorch model; a mismatch beyond the tolerance deletes
the file and raises. Files are written to a temporary name and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ivf_perception.errors import IvfPerceptionError

__all__ = [
    "OnnxExportError",
    "OnnxCheck",
    "ONNX_FORMAT",
    "export_onnx",
    "onnx_metadata",
    "read_onnx_metadata",
    "file_sha256",
]

ONNX_FORMAT = "ivf_perception.onnx/1"
"""Value of the ``format`` metadata key: marks files written by :func:`export_onnx`."""

_REQUIRED_KEYS = ("format", "variant", "preset", "num_classes", "input_multiple", "input_size")
_JSON_KEYS = frozenset({"num_classes", "classes", "palette", "ignore_index", "input_multiple"})
"""Keys whose values are JSON-encoded (numbers, lists); the others are plain strings."""

_INSTALL = "pip install -c requirements/constraints.txt onnx onnxscript onnxruntime"


class OnnxExportError(IvfPerceptionError, ValueError):
    """The model cannot be exported to ONNX, the exported graph disagrees with PyTorch, or a file
    is not one of our ONNX files."""


@dataclass(frozen=True)
class OnnxCheck:
    """The onnxruntime check of an exported file.

    Attributes:
        path: the ``.onnx`` file.
        height, width: the size the graph was traced at (the only size it accepts unless dynamic).
        max_abs_diff: per output name, the largest |onnxruntime − PyTorch| over the checked sizes.
        dynamic: whether the file accepts any H×W divisible by the model's ``input_multiple``.
        checked_sizes: the (H, W) sizes onnxruntime was compared with PyTorch at.
    """

    path: Path
    height: int
    width: int
    max_abs_diff: dict[str, float]
    dynamic: bool = False
    checked_sizes: tuple[tuple[int, int], ...] = ()


class _TupleOutputs(nn.Module):
    """The model with a tuple output (ONNX graphs have no dataclasses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(rgb, thermal)
        return (out.fused,) if out.logits is None else (out.fused, out.logits)


class _GuidedTupleOutputs(_TupleOutputs):
    """A guided model (TeSG) with its guidance as two more graph inputs, ``mask`` (B×1×H×W) and
    ``text_tokens`` (B×L×d)."""

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor, text_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from ivf_perception.guidance import Guidance

        out = self.model(rgb, thermal, guidance=Guidance(mask=mask, text_tokens=text_tokens))
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


def _model_name(model: nn.Module) -> str:
    return getattr(model, "variant", "") or type(model).__name__


def _import_onnx() -> tuple[Any, Any]:
    """``onnx`` and ``onnxruntime``, or an error naming what to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; import here to fail early)
    except ImportError as exc:
        raise OnnxExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}); {_INSTALL}") from exc
    return onnx, onnxruntime


def _check_size(name: str, multiple: int, height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise OnnxExportError(f"ONNX input size must be positive, got {height}x{width}")
    if height % multiple or width % multiple:
        h, w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        raise OnnxExportError(f"ONNX input size {height}x{width} is not divisible by {name}'s input_multiple "
                              f"{multiple}; use {h}x{w} (--height {h} --width {w})")


def export_onnx(model: nn.Module, path: str | Path, *, height: int | None = None, width: int | None = None,
                dynamic: bool = False, metadata: Mapping[str, object] | None = None,
                atol: float = 1e-4, rtol: float = 1e-3, guidance: bool = False) -> OnnxCheck:
    """Export ``model`` to ``path`` and check the file with onnxruntime.

    Args:
        model: a fusion(+segmentation) model on the CPU (put in eval mode here).
        path: destination ``.onnx`` file.
        height, width: input size, divisible by the model's ``input_multiple``. Required for a
            fixed-size file; with ``dynamic`` they are only the tracing size (default: 4 and 6
            times the input multiple).
        dynamic: any H×W divisible by ``input_multiple`` (ONNX dims ``height``/``width``); the
            batch size stays 1 either way.
        metadata: stored as ONNX ``metadata_props`` (values JSON-encoded unless strings), e.g.
            from :func:`onnx_metadata`. ``format`` and ``input_size`` are always written.
        atol, rtol: the check passes when |ort − torch| ≤ atol + rtol·|torch| everywhere.
        guidance: for a guided model (``accepts_guidance``, TeSG), export the guided network with
            two more inputs, ``mask`` (1×1×H×W in [0, 1]) and ``text_tokens`` (1×L×d, L dynamic);
            metadata ``guidance_inputs`` says so. False exports the fallback (inputs as for every
            model).

    Returns:
        The check: sizes compared and the largest differences.

    Raises:
        OnnxExportError: the model is not exportable (``_exportable`` False) or not with dynamic
            shapes, the size is missing or does not fit ``input_multiple``, onnx, onnxruntime or
            onnxscript are missing, the exporter fails, or onnxruntime's outputs differ from
            PyTorch's beyond the tolerance. Nothing is left at ``path`` then.
    """
    path = Path(path)
    name = _model_name(model)
    if not getattr(model, "_exportable", True):
        raise OnnxExportError(
            f"{name} cannot be exported to ONNX (its _exportable flag is False: it uses operations that the "
            "ONNX path does not cover); export the engine weights without --onnx and run them with the "
            "PyTorch Engine"
        )
    if dynamic and not getattr(model, "_dynamic_onnx", True):
        raise OnnxExportError(f"{name} cannot be exported to ONNX with a dynamic input size (its _dynamic_onnx flag "
                              "is False); give --height and --width for a fixed-size file")
    if guidance and not getattr(model, "accepts_guidance", False):
        raise OnnxExportError(f"{name} takes no guidance; export it without --guidance")
    multiple = int(getattr(model, "input_multiple", 1))
    if height is None or width is None:
        if not dynamic:
            raise OnnxExportError(f"exporting {name} to a fixed-size ONNX file needs --height and --width "
                                  "(or --dynamic for any size)")
        height, width = 4 * multiple, 6 * multiple
    _check_size(name, multiple, height, width)
    onnx, ort = _import_onnx()
    wrapper = (_GuidedTupleOutputs if guidance else _TupleOutputs)(model.eval()).eval()
    text_shape = _text_shape(model) if guidance else None
    input_names = ["rgb", "thermal", "mask", "text_tokens"] if guidance else ["rgb", "thermal"]
    example = _random_inputs(height, width, seed=0, text_shape=text_shape)
    # Both names are offered; the exporter names the graph's outputs in order (a fusion-only
    # model has one), so no forward pass is spent counting them (18 s of CMFS paper at 480x640).
    output_names = ["fused", "logits"]
    dynamic_shapes = _dynamic_shapes(multiple, guidance) if dynamic else None
    try:
        with warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir"), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter warns about every fallback it takes
            program = torch.onnx.export(wrapper, example, dynamo=True, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False,
                                        optimize=False)
            if program is not None:
                _optimize(program)
    except torch.onnx.OnnxExporterError as exc:
        if dynamic:
            raise OnnxExportError(f"{name} cannot be exported to ONNX with a dynamic input size ({_cause(exc)}); "
                                  "give --height and --width for a fixed-size file") from exc
        raise OnnxExportError(f"{name} did not export to ONNX at {height}x{width} ({_cause(exc)}); "
                              "the engine weights are unaffected") from exc
    if program is None:  # only when writing to a file object; this call returns the program
        raise OnnxExportError(f"{name}: the ONNX exporter returned no program")
    output_names = output_names[:len(program.model.graph.outputs)]
    proto = program.model_proto
    meta = {**(metadata or {}), "format": ONNX_FORMAT, "input_size": "dynamic" if dynamic else f"{height}x{width}"}
    if text_shape is not None:
        meta["guidance_inputs"] = json.dumps({"mask": "1x1xHxW", "text_tokens": f"1xLx{text_shape[1]}"})
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    sizes = [(height, width)] + ([(height + multiple, width + 2 * multiple)] if dynamic else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: two processes may fill one cache
    try:
        onnx.save(proto, str(tmp))
        diffs = _compare(ort, tmp, wrapper, input_names, output_names, sizes, atol, rtol, text_shape)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxCheck(path, height, width, diffs, dynamic, tuple(sizes))


def _optimize(program: Any) -> None:
    """The exporter's graph clean-up (constant folding, pattern rewrites, dead and duplicate
    nodes), in one pass, without ONNX shape inference per node and without onnxscript's
    ``slice_split_rule``.

    Why not ``onnxscript.optimizer.optimize_ir``: its rewrite pass matches the one pattern with
    two output nodes (two Slices of one tensor into a Split) by listing every node of the graph
    for every Slice it tries, quadratic in the graph size: 20-40 s of S4Fusion paper's export
    and most of CMFS paper's. Without that rule the result had as many nodes (2,493 for
    S4Fusion paper at 480×640) and equal outputs, in about 2 s. Shape inference per node (the
    default, with two passes) took 40 % of an export for 5 % fewer nodes, which ONNX Runtime and
    TensorRT fold at load anyway.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.rules.common import slice_split_rule

    model = program.model
    common.InlinePass()(model)
    optimizer.fold_constants(model, onnx_shape_inference=False)
    # onnxscript's own default rule list (a private name; onnxscript is pinned in
    # requirements/constraints.txt and test_onnx_optimize compares the result with optimize_ir).
    rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule is not slice_split_rule]
    ir.passes.Sequential(
        rewriter.RewritePass(rules),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _dynamic_shapes(multiple: int, guidance: bool = False) -> dict[str, dict[int, Any]]:
    """H and W as multiples of ``input_multiple`` (derived dims), shared by all image inputs; the
    number of text tokens of a guided export is dynamic too."""
    from torch.export import Dim

    h = Dim("height_blocks", min=1, max=8192 // multiple) * multiple if multiple > 1 else Dim("height", max=8192)
    w = Dim("width_blocks", min=1, max=8192 // multiple) * multiple if multiple > 1 else Dim("width", max=8192)
    shapes: dict[str, dict[int, Any]] = {"rgb": {2: h, 3: w}, "thermal": {2: h, 3: w}}
    if guidance:
        shapes.update({"mask": {2: h, 3: w}, "text_tokens": {1: Dim("text_len", min=2, max=1024)}})
    return shapes


def _text_shape(model: nn.Module) -> tuple[int, int]:
    """(L, d) of a guided model's stored fallback tokens: the example text of the export."""
    tokens = getattr(model, "fallback_text", None)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise OnnxExportError(f"{_model_name(model)} has no fallback_text buffer to size its text_tokens input")
    return int(tokens.shape[0]), int(tokens.shape[1])


def _random_inputs(height: int, width: int, seed: int,
                   text_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(1, 3, height, width, generator=generator),
              torch.rand(1, 1, height, width, generator=generator))
    if text_shape is None:
        return images
    length = text_shape[0] + seed  # another token count at every check: the length is dynamic
    return (*images, (torch.rand(1, 1, height, width, generator=generator) > 0.5).float(),
            torch.randn(1, length, text_shape[1], generator=generator))


def _compare(ort: Any, path: Path, wrapper: nn.Module, input_names: list[str], output_names: list[str],
             sizes: Sequence[tuple[int, int]], atol: float, rtol: float,
             text_shape: tuple[int, int] | None = None) -> dict[str, float]:
    """Run the file on fresh inputs (not the traced ones) and compare every output with PyTorch."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # not one per core: the CPU may be shared
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    for seed, (height, width) in enumerate(sizes, start=1):
        inputs = _random_inputs(height, width, seed, text_shape)
        with torch.no_grad():
            expected = wrapper(*inputs)
        try:
            got = session.run(output_names, {n: x.numpy() for n, x in zip(input_names, inputs)})
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            raise OnnxExportError(f"onnxruntime could not run the exported graph at {height}x{width} "
                                  f"({type(exc).__name__}: {str(exc)[:300]}); the ONNX file was not written") from exc
        for name, ref, out in zip(output_names, expected, got):
            ref_np = ref.numpy()
            if out.shape != ref_np.shape:
                raise OnnxExportError(f"onnxruntime's {name!r} has shape {out.shape} at {height}x{width}, "
                                      f"PyTorch's {ref_np.shape}; the ONNX file was not written")
            diff = float(np.abs(out - ref_np).max())
            diffs[name] = max(diffs.get(name, 0.0), diff)
            if not np.allclose(out, ref_np, atol=atol, rtol=rtol):
                raise OnnxExportError(
                    f"onnxruntime's {name!r} differs from PyTorch's by up to {diff:.3g} at {height}x{width} "
                    f"(tolerance {atol} + {rtol}·|x|){_selection_note(wrapper, inputs)}; the ONNX file was not written"
                )
    return diffs


def _selection_note(wrapper: nn.Module, inputs: Sequence[torch.Tensor]) -> str:
    """For a model with hard top-k selections (``selection_margin``, UP-Fusion): the smallest
    deciding score margin on the check input, so a near-tie flipped between backends (spec §1.11)
    is told apart from an operator exported wrong."""
    margin_of = getattr(getattr(wrapper, "model", None), "selection_margin", None)
    if margin_of is None:
        return ""
    margin = float(margin_of(*inputs[:2]))
    return (f"; its hard top-k selections have a smallest score margin of {margin:.2g} on this input, so "
            "if that is near float precision (~1e-6) a near-tie resolved differently in onnxruntime "
            "(spec §1.11; see the README's UP-Fusion section) rather than an operator exported wrong")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks (weight files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_metadata(model: nn.Module, weights_path: Path | None, class_names: Sequence[str] | None = None,
                  palette: Sequence[int] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported ``model``: what a consumer needs besides the graph.

    Class names and palette come from the arguments, else from the weights' sidecar; the
    ignore index is written when the sidecar's training recipe names one. The input size
    (``HxW`` or ``dynamic``) and ``format`` are added by :func:`export_onnx`.

    Args:
        model: the model being exported (its ``variant``, ``preset``, ``num_classes``,
            ``input_multiple``).
        weights_path: the engine weights the model was loaded from (hashed with SHA-256), or
            None for a randomly initialised model (``weights_sha256`` is then empty).
        class_names, palette: override the sidecar's class table.

    Returns:
        String keys to string values (JSON for numbers and lists).
    """
    from ivf_perception import __version__

    classes: list[str] = list(class_names) if class_names is not None else []
    colours: list[int] = [int(c) for c in palette] if palette is not None else []
    variant = str(getattr(model, "variant", "") or type(model).__name__)
    preset = str(getattr(model, "preset", ""))
    ignore_index = None
    digest = ""
    if weights_path is not None:
        from ivf_perception.engine.weights import read_sidecar

        info = read_sidecar(weights_path)
        variant, preset = info.variant, info.preset  # the registry name (test_s4fusion), not the family
        classes = classes or list(info.classes)
        colours = colours or [int(c) for c in info.palette]
        ignore_index = info.recipe.get("ignore_index")
        digest = file_sha256(weights_path)
    meta = {
        "variant": variant,
        "preset": preset,
        "num_classes": json.dumps(int(getattr(model, "num_classes", 0))),
        "classes": json.dumps(classes),
        "palette": json.dumps(colours),
        "input_multiple": json.dumps(int(getattr(model, "input_multiple", 1))),
        "weights_sha256": digest,
        "package_version": __version__,
        "torch_version": torch.__version__,
    }
    if ignore_index is not None:
        meta["ignore_index"] = json.dumps(int(ignore_index))
    return meta


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by :func:`export_onnx`, decoded (numbers and lists as such).

    Raises:
        OnnxExportError: naming the file when it is missing, unreadable, not an ONNX model, or
            lacks the keys :func:`export_onnx` writes.
    """
    path = Path(path)
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError as exc:
        raise OnnxExportError(f"reading {path} needs the onnx package ({exc}); {_INSTALL}") from exc
    if not path.is_file():
        raise OnnxExportError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise OnnxExportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    raw = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing or raw.get("format") != ONNX_FORMAT or not proto.graph.node:
        raise OnnxExportError(f"{path}: not an ivf_perception ONNX export (metadata lacks {missing or ['format']}); "
                              "export it with `ivf-perception export-onnx`")
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value) if key in _JSON_KEYS else value
        except json.JSONDecodeError as exc:
            raise OnnxExportError(f"{path}: metadata {key!r} is not valid JSON ({value[:80]!r})") from exc
    return decoded
