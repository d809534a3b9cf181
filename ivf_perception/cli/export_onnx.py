"""``ivf-perception export-onnx``: an ONNX file of engine weights, checked with ONNX Runtime.

The file has inputs ``rgb`` (1×3×H×W) and ``thermal`` (1×1×H×W), float in [0, 1], outputs
``fused`` and (for segmenting weights) ``logits``, and the class table, palette, input
multiple, size and the weights' SHA-256 in its metadata. ``--height/--width`` fix the size;
``--dynamic`` accepts any size divisible by the model's input multiple. Written next to the
weights unless ``--out`` says otherwise; the export is compared with PyTorch before it is kept.

``--guidance`` (guided models: tesg) exports the guided network, with two more inputs ``mask``
(1×1×H×W in [0, 1]) and ``text_tokens`` (1×L×d) and ``-guided`` in the default file name; without
it, the fallback network is exported (the inputs of every model).

The ONNX Runtime and TensorRT backends export and cache such a file by themselves; this command
is for shipping one (to another runtime, a robot without PyTorch, or to inspect it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ivf_perception.cli._common import setup_logging, user_errors
from ivf_perception.engine.weights import build_model_from_weights
from ivf_perception.export import export_onnx, onnx_metadata

__all__ = ["build_parser", "main", "default_output"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception export-onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="engine weights .safetensors (with its .json sidecar)")
    p.add_argument("--variant", default=None, help="expected variant (default: the sidecar's); a mismatch fails")
    p.add_argument("--height", type=int, default=None, help="fixed input height (with --width)")
    p.add_argument("--width", type=int, default=None, help="fixed input width (with --height)")
    p.add_argument("--dynamic", action="store_true",
                   help="any input size divisible by the model's input multiple (--height/--width then only "
                        "set the size traced and checked first)")
    p.add_argument("--guidance", action="store_true",
                   help="guided models (tesg): add the inputs mask and text_tokens (default: the fallback network)")
    p.add_argument("--out", type=Path, default=None,
                   help="output .onnx (default: next to the weights, NAME-HxW.onnx or NAME-dynamic.onnx)")
    return p


def default_output(weights: Path, height: int | None, width: int | None, dynamic: bool,
                   guidance: bool = False) -> Path:
    """``NAME-dynamic.onnx`` or ``NAME-HxW.onnx`` beside ``NAME.safetensors`` (``-guided`` before
    the suffix for a guided export)."""
    size = "dynamic" if dynamic else f"{height}x{width}"
    return weights.with_name(f"{weights.stem}-{size}{'-guided' if guidance else ''}.onnx")


@user_errors("ivf-perception export-onnx")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width (or neither, with --dynamic)")
    if not args.dynamic and args.height is None:
        raise ValueError("give --height and --width for a fixed-size file, or --dynamic for any size")
    weights = Path(args.weights)
    model, info = build_model_from_weights(weights, variant=args.variant)
    out = args.out or default_output(weights, args.height, args.width, args.dynamic, args.guidance)
    start = time.perf_counter()
    check = export_onnx(model, out, height=args.height, width=args.width, dynamic=args.dynamic,
                        metadata=onnx_metadata(model, weights), guidance=args.guidance)
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{h}x{w}" for h, w in check.checked_sizes)
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in check.max_abs_diff.items())
    kind = "dynamic size" if check.dynamic else f"{check.height}x{check.width}"
    print(f"wrote {out} ({info.variant}/{info.preset}, {kind}) in {seconds:.0f} s; "
          f"onnxruntime vs PyTorch at {sizes}: max |diff| {diffs}")
    return 0
