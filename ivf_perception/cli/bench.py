"""``ivf-perception bench``: cost of every variant and preset, and the selective scan's speed.

Prints Markdown tables (paste into the README) and optionally writes JSON. CPU fp32 always,
with the fused CPU scan kernel (where it is built) and with the chunked scan; on a CUDA
machine also fp32/bf16 with our chunked scan and, when mamba-ssm is installed, with its CUDA
kernel. Randomly initialised models: cost does not depend on the weights.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ivf_perception.cli._common import parse_size, setup_logging, user_errors
from ivf_perception.engine import Engine
from ivf_perception.engine.profiling import compare_engines, count_gmacs, count_parameters, measure_latency
from ivf_perception.models import build_model, describe_presets, list_models, list_presets
from ivf_perception.models.ops import has_cpu_scan, has_cuda_scan
from ivf_perception.models.ops.bench import bench_selective_scan

__all__ = ["build_parser", "main", "run_benchmarks"]

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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto: CPU, plus CUDA when available")
    p.add_argument("--scan-length", type=int, default=19200, help="L of the selective-scan comparison")
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--fused-vs-chunked", nargs="*", default=list(FUSED_VS_CHUNKED), metavar="VARIANT/PRESET",
                   help="engines timed with the fused CPU kernels against the chunked scan, interleaved "
                        f"(default: {' '.join(FUSED_VS_CHUNKED)}; 'default' = the bundled weights; none: skip)")
    p.add_argument("--fused-size", type=parse_size, default=(240, 320), help="HxW of that comparison (240x320)")
    p.add_argument("--json", help="write all results to this file")
    return p


def _configs(device_arg: str, has_scan: bool = True) -> list[dict[str, Any]]:
    """Device/precision/scan combinations to time; models without a selective scan get one
    row per device and precision (scan "-")."""
    configs = []
    if device_arg in ("auto", "cpu"):
        scans = (["cpu"] if has_cpu_scan() else []) + ["chunked"] if has_scan else ["-"]
        configs += [{"device": "cpu", "precision": "fp32", "scan": s} for s in scans]
    if device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available()):
        dev = "cuda" if device_arg == "auto" else device_arg
        scans = (["chunked"] + (["cuda"] if has_cuda_scan() else [])) if has_scan else ["-"]
        for precision in ("fp32", "bf16"):
            configs += [{"device": dev, "precision": precision, "scan": s} for s in scans]
    return configs


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    variants = args.variants or [v for v in list_models() if not v.startswith("test_")]
    rows = []
    for variant in variants:
        for preset in args.presets or list_presets(variant, include_test=False):
            try:
                # on the meta device: counting needs shapes only, not a 100 GMAC CPU forward
                model = build_model(variant, preset=preset, device="meta")
            except ValueError as exc:  # the family has no such preset
                print(f"skipped {variant}/{preset}: {exc}", flush=True)
                continue
            params = count_parameters(model)
            gmacs = count_gmacs(model, 480, 640, device="meta")
            scans = "scan_backend" in inspect.signature(type(model).__init__).parameters
            del model
            if preset in args.params_only:
                rows.append({"variant": variant, "preset": preset, "device": "-", "precision": "-", "scan": "-",
                             "size": "-", "params_M": params / 1e6, "gmacs_480x640": gmacs, "latency_ms": None,
                             "p90_ms": None, "fps": None, "stages_ms": {}, "peak_mem_mib": None})
                print(_row_line(rows[-1]), flush=True)
                continue
            for cfg in _configs(args.device, scans):
                engine = Engine(variant, preset=preset, device=cfg["device"], precision=cfg["precision"],
                                **({"scan_backend": cfg["scan"]} if scans else {}))
                for h, w in args.sizes:
                    stats = measure_latency(engine, h, w, repeats=args.repeats)
                    rows.append({"variant": variant, "preset": preset, **cfg, "size": f"{h}x{w}",
                                 "params_M": params / 1e6, "gmacs_480x640": gmacs,
                                 "latency_ms": stats.median_ms, "p90_ms": stats.p90_ms, "fps": stats.fps,
                                 "stages_ms": stats.stages_ms, "peak_mem_mib": stats.peak_mem_mib})
                    print(_row_line(rows[-1]), flush=True)
                engine.release()
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "models": rows,
    }
    if not args.skip_scan:
        result["selective_scan"] = bench_selective_scan(L=args.scan_length)
    if args.fused_vs_chunked and args.device in ("auto", "cpu") and has_cpu_scan():
        h, w = args.fused_size
        result["fused_vs_chunked"] = [_fused_vs_chunked(entry, h, w, max(args.repeats, 5))
                                      for entry in args.fused_vs_chunked]
    return result


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
    mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] is not None else "-"
    scan = "fused CPU" if r["scan"] == "cpu" else r["scan"]
    where = f"{r['device']} {r['precision']} ({scan} scan)" if r["latency_ms"] is not None else "not timed"
    latency = f"{r['latency_ms']:.1f} | {r['fps']:.2f}" if r["latency_ms"] is not None else "- | -"
    return (f"| {r['variant']} | {r['preset']} | {where} | {r['size']} | "
            f"{r['params_M']:.2f} | {r['gmacs_480x640']:.2f} | {latency} | {mem} |")


def format_tables(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, GPU: {m['gpu'] or 'none'}", "",
             "| variant | preset | device / precision | size | params (M) | GMACs @480x640 | latency ms (median) "
             "| FPS | peak GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in result["models"]]
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
