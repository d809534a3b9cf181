"""Options shared by the commands that run the engine, and the error boundary for users.

Options default to ``None`` so a variant's or weight sidecar's defaults win unless the user
says otherwise (STYLE: CLI defaults never replace variant defaults).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ivf_perception.engine import Engine
from ivf_perception.engine.config import (
    GUIDANCE_MODE_NAMES,
    INFERENCE_BACKENDS,
    PRECISION_NAMES,
    SCAN_BACKENDS,
    PipelineConfig,
    default_weights,
)
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.models.registry import describe_presets

__all__ = [
    "add_engine_arguments",
    "add_backend_arguments",
    "add_threads_argument",
    "engine_options",
    "engine_from_args",
    "parse_size",
    "user_errors",
    "setup_logging",
]


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--variant", default=None, help="model family (default: from the weights; s4fusion)")
    g.add_argument("--weights", default=None,
                   help="engine weights .safetensors (with sidecar); 'default' = bundled (the GPU default on "
                        "CUDA when bundled, else the CPU default; the choice is printed on stderr); "
                        "'none' = random init")
    g.add_argument("--preset", default=None, help=f"size preset when no weights are used ({describe_presets()})")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.add_argument("--precision", default="fp32", choices=list(PRECISION_NAMES))
    add_backend_arguments(g)
    g.add_argument("--batch-size", type=int, default=1, help="pairs per inference call")
    add_threads_argument(g)
    add_guidance_arguments(g)


def add_guidance_arguments(group: argparse._ActionsContainer) -> None:
    """``--guidance-mode`` / ``--guidance-cache`` / ``--guidance-max-age`` of guided models (tesg)."""
    group.add_argument("--guidance-mode", default=None, choices=list(GUIDANCE_MODE_NAMES),
                       help="per-frame guidance of guided models (tesg): fallback (default), cache (the entries "
                            "`ivf-train tesg-guidance` wrote for these images; frames without one run the "
                            "fallback and are counted), async (--guidance-function at its own rate)")
    group.add_argument("--guidance-cache", default=None, help="guidance cache folder (--guidance-mode cache)")
    group.add_argument("--guidance-max-age", dest="guidance_max_age_s", type=float, default=None,
                       help="async guidance: oldest usable guidance, seconds (default 1.0)")
    group.add_argument("--guidance-function", default=None, metavar="MODULE:FACTORY",
                       help="async guidance: factory() returns f(rgb, thermal) -> ivf_perception.guidance.Guidance")


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads N``: CPU threads of torch and OpenCV (the pipeline's ``threads`` setting)."""
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch and OpenCV; 0 = auto (default, unless a params file "
                             "sets it): usable physical cores minus one, 1..4, so other processes keep a "
                             "core (oversubscribed threads make the scan's many small ops far slower)")


def add_backend_arguments(group: argparse._ActionsContainer) -> None:
    """``--backend``, its cache options and ``--scan-backend`` (unset ones keep a params file's)."""
    group.add_argument("--backend", default=None, choices=list(INFERENCE_BACKENDS),
                       help="inference backend (default torch): compile = torch.compile; onnxruntime/tensorrt "
                            "export and cache an ONNX file of the weights (a .onnx --weights file runs directly)")
    group.add_argument("--backend-cache-dir", default=None,
                       help="folder of exported ONNX files and TensorRT engines (default: the user cache)")
    group.add_argument("--force-rebuild", action="store_true", default=None,
                       help="re-export / rebuild the cached ONNX file or TensorRT engine")
    group.add_argument("--scan-backend", default=None, choices=list(SCAN_BACKENDS),
                       help="selective-scan implementation of the SSM families (default auto)")


_BACKEND_OPTIONS = ("backend", "backend_cache_dir", "force_rebuild", "scan_backend",
                    "guidance_mode", "guidance_cache", "guidance_max_age_s", "guidance_function")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options as pipeline values (unset weights chosen by ``default_weights``).

    Backend options appear only when given, so a params file's values stay in force otherwise.
    """
    weights = args.weights if args.weights is not None else default_weights(args.variant, args.preset)
    values = {"variant": args.variant or "auto", "weights": weights, "preset": args.preset or "",
              "device": args.device, "precision": args.precision}
    for key in ("threads", *_BACKEND_OPTIONS):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def engine_from_args(args: argparse.Namespace, pipeline: Mapping[str, Any] | None = None) -> Engine:
    """Build the engine from the options on top of ``pipeline`` values (e.g. a node params file).

    The same :meth:`Engine.from_config` rules as the node's, CPU threads included
    (``--threads``, else the params file's ``threads``, else auto).
    """
    engine = Engine.from_config(PipelineConfig.from_values({**(pipeline or {}), **engine_options(args)}))
    if engine.weights_choice:  # ``--weights default``: which bundled file this device got and why
        print(engine.weights_choice, file=sys.stderr)
    return engine


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``240x320``) to a (height, width) tuple, for argparse ``type=``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 240x320 (HxW), got '{text}'") from exc
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {h}x{w}")
    return h, w


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def user_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator: turn a known problem into one line on stderr and exit code 2, not a traceback.

    Known problems are the package's errors (:class:`~ivf_perception.errors.IvfPerceptionError`:
    missing or corrupt files, bad images, unknown models, refused weights), and the builtin
    ``ValueError`` / ``FileNotFoundError`` that argument checks and file opens raise for a value
    the user typed. Anything else is a bug and keeps its traceback.
    """
    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        def inner(*a, **kw) -> int:
            try:
                return fn(*a, **kw)
            except (IvfPerceptionError, ValueError, FileNotFoundError) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner
    return wrap
