"""``ivf-perception bench``: cost, speed and accuracy of every variant, preset and backend.

Prints a Markdown table (paste into the README) and optionally writes JSON: one row per
variant × preset × device × size × backend × precision with the latency p50/p90 through the
Engine (pre- and post-processing included, as a node pays it), frames/s, the time to build and
warm the engine (export, compile, engine build), the accuracy against eager PyTorch fp32 on the
same device and input (largest |fused difference| and the share of equal labels) and, on CUDA,
the peak memory of PyTorch's allocator (ONNX Runtime and TensorRT allocate outside it: "-").
CPU rows always (``--device auto``); GPU rows too when CUDA is available. A backend/precision
pair a backend does not support (onnxruntime bf16, fp16 on the CPU) is listed as skipped with
the reason. Randomly initialised models: cost does not depend on the weights. Exports go to a
temporary cache unless ``--backend-cache-dir`` is given.

    ivf-perception bench --variants s4fusion --presets small --sizes 480x640 \
        --backends torch,compile,onnxruntime --precisions fp32,bf16

SSM families get one row per ``--scan-backends`` entry (e.g. ``cpu,chunked``: the fused CPU
kernel against the chunked scan in one run).
Fused vs chunked (``--fused-vs-chunked``): the same engine with the fused CPU kernels and with
the chunked scan, calls interleaved in one run so that a shared machine's load falls on both,
with the share of equal labels; ``s4fusion/default`` is the bundled weights, other entries are
``variant/preset`` at one random initialisation shared by both engines.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ivf_perception.cli._common import add_threads_argument, parse_size, setup_logging, user_errors
from ivf_perception.engine import Engine
from ivf_perception.engine.backends import BackendError
from ivf_perception.engine.config import INFERENCE_BACKENDS, PRECISION_NAMES, SCAN_BACKENDS
from ivf_perception.engine.postprocess import logits_to_labels
from ivf_perception.engine.profiling import compare_engines, count_gmacs, count_parameters, measure_latency
from ivf_perception.engine.threads import AUTO, apply_threads
from ivf_perception.errors import IvfPerceptionError
from ivf_perception.models import FusionSegModel, build_model, describe_presets, list_models, list_presets
from ivf_perception.models.ops import has_cpu_scan
from ivf_perception.models.ops.bench import bench_selective_scan

__all__ = ["build_parser", "main", "run_benchmarks"]

_TORCH_ALLOCATED = ("torch", "compile")
"""Backends whose GPU memory PyTorch's allocator sees (the peak column)."""


def _names(choices: Sequence[str]) -> Any:
    """argparse type: a comma-separated list of names from ``choices``."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"use a comma-separated list of {', '.join(choices)}, got '{text}'")
        return names
    return parse


FUSED_VS_CHUNKED = ("s4fusion/default", "s4fusion/small", "cmfs/small")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ivf-perception bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=None, help="families (default: all registered, not test_*)")
    p.add_argument("--presets", nargs="+", default=None,
                   help=f"presets to measure (default: each family's own; {describe_presets()}); "
                        "a family without a requested one is skipped with a note")
    p.add_argument("--params-only", nargs="+", default=[], metavar="PRESET",
                   help="presets whose parameters and GMACs are reported without latency (e.g. CMFS paper on a CPU)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(480, 640), (240, 320)])
    p.add_argument("--backends", type=_names(INFERENCE_BACKENDS), default=["torch"],
                   help=f"comma-separated inference backends ({', '.join(INFERENCE_BACKENDS)}; default torch)")
    p.add_argument("--precisions", type=_names(PRECISION_NAMES), default=None,
                   help="comma-separated precisions (default: fp32 on the CPU, fp32,bf16 on CUDA)")
    p.add_argument("--scan-backends", type=_names(SCAN_BACKENDS), default=["auto"],
                   help="comma-separated selective-scan implementations of the SSM families, one row each "
                        "(default auto; e.g. cpu,chunked compares the fused CPU kernel with the chunked scan)")
    p.add_argument("--backend-cache-dir", default=None,
                   help="ONNX/TensorRT cache (default: a temporary folder, removed afterwards)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto: CPU, plus CUDA when available; or cpu / cuda[:N]")
    p.add_argument("--scan-length", type=int, default=19200, help="L of the selective-scan comparison")
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--fused-vs-chunked", nargs="*", default=list(FUSED_VS_CHUNKED), metavar="VARIANT/PRESET",
                   help="engines timed with the fused CPU kernels against the chunked scan, interleaved "
                        f"(default: {' '.join(FUSED_VS_CHUNKED)}; 'default' = the bundled weights; none: skip)")
    p.add_argument("--fused-size", type=parse_size, default=(240, 320), help="HxW of that comparison (240x320)")
    p.add_argument("--json", help="write all results to this file")
    add_threads_argument(p)
    return p


def _devices(device_arg: str) -> list[str]:
    devices = []
    if device_arg in ("auto", "cpu"):
        devices.append("cpu")
    if device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available()):
        devices.append("cuda" if device_arg == "auto" else device_arg)
    return devices


def _reference_inputs(height: int, width: int, multiple: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random pair at the size padded to the model's multiple (what the Engine runs)."""
    h, w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, h, w, generator=g).to(device), torch.rand(1, 1, h, w, generator=g).to(device)


def _accuracy(engine: Engine, inputs: tuple[torch.Tensor, torch.Tensor],
              reference: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[float, float | None]:
    """Largest |fused − reference fused| and % of equal labels, on the same input."""
    with torch.inference_mode():
        out = engine.infer_tensors(*inputs)
    diff = float((out.fused.float() - reference[0]).abs().max())
    if out.logits is None or reference[1] is None:
        return diff, None
    same = logits_to_labels(out.logits) == logits_to_labels(reference[1])
    return diff, float(same.mean() * 100.0)


def _row(variant: str, preset: str, params: float, gmacs: float, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"variant": variant, "preset": preset, "where": "-", "device": "-", "size": "-",
                            "backend": "-", "precision": "-", "scan": "-", "params_M": params / 1e6,
                            "gmacs_480x640": gmacs,
                            "latency_ms": None, "p90_ms": None, "fps": None, "build_s": None, "stages_ms": {},
                            "fused_max_abs_diff": None, "label_agreement_pct": None, "peak_mem_mib": None}
    return {**base, **values}


def _bench_model(args: argparse.Namespace, variant: str, preset: str, device: str, params: float, gmacs: float,
                 scans: bool, cache_dir: str, rows: list[dict[str, Any]], skipped: list[str]) -> None:
    """Every size × backend × precision of one model on one device, against its torch fp32.

    ``scans``: the family has a selective scan (takes ``scan_backend``)."""
    for scan in args.scan_backends if scans else ["-"]:
        _bench_scan(args, variant, preset, device, params, gmacs, scan, cache_dir, rows, skipped)


def _scan_unavailable(scan: str, device: str) -> str | None:
    """Why a forced selective-scan kernel cannot run on ``device`` here, or None."""
    if scan == "cpu" and (device != "cpu" or not has_cpu_scan()):
        return "the fused CPU kernel runs on the CPU only and is not built here (README, Fused CPU kernel)"
    if scan in ("cuda", "triton") and not device.startswith("cuda"):
        return f"the {scan} scan needs a CUDA device"
    return None


def _bench_scan(args: argparse.Namespace, variant: str, preset: str, device: str, params: float, gmacs: float,
                scan: str, cache_dir: str, rows: list[dict[str, Any]], skipped: list[str]) -> None:
    """The rows of one model built with one selective-scan implementation (``-``: none)."""
    overrides: dict[str, Any] = {"scan_backend": scan} if scan not in ("-", "auto") else {}
    unavailable = _scan_unavailable(scan, device)
    if unavailable:  # a forced kernel fails only at the first forward: say so up front instead
        skipped.append(f"{variant}/{preset} {scan} scan: {unavailable}")
        print(f"skipped {variant}/{preset} {scan} scan: {unavailable}", flush=True)
        return
    try:
        model = build_model(variant, preset=preset, **overrides)
    except (RuntimeError, ValueError) as exc:  # e.g. the fused CPU kernel is not built here
        skipped.append(f"{variant}/{preset} {scan} scan: {exc}")
        print(f"skipped {variant}/{preset} {scan} scan: {exc}", flush=True)
        return
    assert isinstance(model, FusionSegModel)
    reference = Engine(model, device=device)
    precisions = args.precisions or (["fp32", "bf16"] if device.startswith("cuda") else ["fp32"])
    where = "GPU" if device.startswith("cuda") else "CPU"
    for h, w in args.sizes:
        inputs = _reference_inputs(h, w, reference.input_multiple, device)
        with torch.inference_mode():
            ref_out = reference.infer_tensors(*inputs)
        expected = (ref_out.fused.float().clone(), None if ref_out.logits is None else ref_out.logits.float().clone())
        for backend in args.backends:
            for precision in precisions:
                label = f"{variant}/{preset} {where} {h}x{w} {backend} {precision} {scan} scan"
                started = time.perf_counter()
                try:
                    engine = Engine(model, device=device, precision=precision, backend=backend,
                                    backend_options={"cache_dir": cache_dir})
                    engine.warmup(h, w)
                except (BackendError, IvfPerceptionError, ValueError) as exc:
                    skipped.append(f"{label}: {exc}")
                    print(f"skipped {label}: {exc}", flush=True)
                    continue
                build_s = time.perf_counter() - started
                stats = measure_latency(engine, h, w, repeats=args.repeats)
                diff, agree = _accuracy(engine, inputs, expected)
                rows.append(_row(variant, preset, params, gmacs, where=where, device=device, size=f"{h}x{w}",
                                 backend=backend, precision=precision, scan=scan, latency_ms=stats.median_ms,
                                 p90_ms=stats.p90_ms, fps=stats.fps, build_s=build_s, stages_ms=stats.stages_ms,
                                 fused_max_abs_diff=diff, label_agreement_pct=agree,
                                 peak_mem_mib=stats.peak_mem_mib if backend in _TORCH_ALLOCATED else None))
                print(_row_line(rows[-1]), flush=True)
                engine.release()  # the backend's session/graphs; the shared model stays
    reference.release()


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads or AUTO)
    torch.manual_seed(0)
    variants = args.variants or [v for v in list_models() if not v.startswith("test_")]
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ivf-bench-cache-") as tmp:
        cache_dir = args.backend_cache_dir or tmp
        for variant in variants:
            for preset in args.presets or list_presets(variant, include_test=False):
                try:
                    # on the meta device: counting needs shapes only, not a 100 GMAC CPU forward
                    meta_model = build_model(variant, preset=preset, device="meta")
                except ValueError as exc:  # the family has no such preset
                    print(f"skipped {variant}/{preset}: {exc}", flush=True)
                    continue
                params = count_parameters(meta_model)
                gmacs = count_gmacs(meta_model, 480, 640, device="meta")
                scans = "scan_backend" in inspect.signature(type(meta_model).__init__).parameters
                guided = bool(getattr(meta_model, "accepts_guidance", False))
                guided_gmacs = count_gmacs(meta_model, 480, 640, device="meta", guided=True) if guided else None
                guided_where = {"where": "fallback (no guidance)"} if guided else {}
                del meta_model
                if preset in args.params_only:
                    rows.append(_row(variant, preset, params, gmacs, **guided_where))
                    print(_row_line(rows[-1]), flush=True)
                    if guided_gmacs is not None:  # a guided model: its cost with guidance too
                        rows.append(_row(variant, preset, params, guided_gmacs, where="guided (mask + text)"))
                        print(_row_line(rows[-1]), flush=True)
                    continue
                for device in _devices(args.device):
                    torch.manual_seed(0)
                    _bench_model(args, variant, preset, device, params, gmacs, scans, cache_dir, rows, skipped)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "models": rows,
        "skipped": skipped,
    }
    if not args.skip_scan:
        result["selective_scan"] = bench_selective_scan(L=args.scan_length)
    if args.fused_vs_chunked and args.device in ("auto", "cpu") and has_cpu_scan():
        h, w = args.fused_size
        result["fused_vs_chunked"] = [_fused_vs_chunked(entry, h, w, max(args.repeats, 5))
                                      for entry in args.fused_vs_chunked]
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fused_vs_chunked(entry: str, height: int, width: int, repeats: int) -> dict[str, Any]:
    """One ``variant/preset`` engine with the fused CPU kernels against the chunked scan."""
    variant, _, preset = entry.partition("/")
    engines = []
    for scan in ("auto", "chunked"):
        overrides: dict[str, Any] = {} if scan == "auto" else {"scan_backend": scan}
        if preset == "default":
            engines.append(Engine.default(device="cpu", **overrides))
        else:
            torch.manual_seed(0)  # the same random weights in both engines
            engines.append(Engine(variant, preset=preset, device="cpu", **overrides))
    row = {"model": f"{variant}/{engines[0].preset}" + (" (bundled)" if preset == "default" else ""),
           "size": f"{height}x{width}", **compare_engines(engines[0], engines[1], height, width, repeats=repeats)}
    print(f"fused vs chunked: {row}", flush=True)
    return row


def _row_line(r: dict[str, Any]) -> str:
    return (f"| {r['variant']} | {r['preset']} | {r['where']} | {r['size']} | {r['backend']} | {r['precision']} | "
            f"{r['scan']} | {r['params_M']:.2f} | {r['gmacs_480x640']:.2f} | {_fmt(r['latency_ms'], '.1f')} | "
            f"{_fmt(r['p90_ms'], '.1f')} | {_fmt(r['fps'], '.2f')} | {_fmt(r['build_s'], '.1f')} | "
            f"{_fmt(r['fused_max_abs_diff'], '.1e')} | {_fmt(r['label_agreement_pct'], '.2f')} | "
            f"{_fmt(r['peak_mem_mib'], '.0f')} |")


def format_tables(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, GPU: {m['gpu'] or 'none'}", "",
             "| variant | preset | where | size | backend | precision | scan | params (M) | GMACs @480x640 "
             "| p50 ms | p90 ms | frames/s | build s | fused max abs diff | labels equal % | peak GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in result["models"]]
    lines += [f"- skipped {line}" for line in result.get("skipped", [])]
    scan = result.get("selective_scan")
    if scan:
        fused = scan.get("fused_s") is not None
        lines += ["", "| selective scan | L | D | N | sequential ms | chunked ms | fused kernel ms "
                  "| chunked vs sequential | fused vs chunked | max abs error chunked / fused |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| fp32 {scan.get('device', 'cpu')} | {scan['L']} | {scan['D']} | {scan['N']} | "
                  f"{scan['ref_s'] * 1e3:.1f} | {scan['chunked_s'] * 1e3:.1f} | "
                  f"{scan['fused_s'] * 1e3 if fused else float('nan'):.1f} | {scan['speedup']:.1f}x | "
                  f"{scan['fused_speedup'] if fused else float('nan'):.1f}x | {scan['max_abs_err']:.2e} / "
                  f"{scan['fused_max_abs_err'] if fused else float('nan'):.2e} |"]
    compared = result.get("fused_vs_chunked")
    if compared:
        lines += ["", "| CPU fp32, fused kernels vs chunked scan | size | fused ms | chunked ms | speed-up | FPS "
                  "| labels equal | fused image max abs diff |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['size']} | {r['new_ms']:.1f} | {r['old_ms']:.1f} | {r['speedup']:.2f}x | "
                  f"{r['new_fps']:.1f} | {100 * r['labels_equal']:.3f} % | {r['fused_max_abs_diff']:.0f} |"
                  for r in compared]
    return "\n".join(lines)


@user_errors("ivf-perception bench")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    result = run_benchmarks(args)
    print()
    print(format_tables(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
