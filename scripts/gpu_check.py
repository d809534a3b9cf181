#!/usr/bin/env python3
"""GPU check: everything in this repository that only a CUDA machine can verify, in one run.

Run on a GPU machine from the repository root, with no virtual environment and nothing to
install (torch with CUDA, numpy, opencv, pyyaml, timm and pytest as a GPU image has them):

    make gpu-check                      # = PYTHONPATH=. python3 scripts/gpu_check.py
    PYTHONPATH=. python3 scripts/gpu_check.py --out /tmp/gpu --budget-s 300

Steps, in order (each one passes, fails or is skipped with the reason; none stops the others):

1. ``environment``: torch, CUDA device, Triton, mamba-ssm, onnxruntime providers, TensorRT.
2. ``gpu_tests``: the ``gpu``-marked pytest tests (CUDA paths of the scan, the models, I/O).
3. ``triton_scan``: our Triton selective scan against the sequential reference on CUDA
   (fp32, bf16; grouped and ungrouped), and its time against the chunked form at L = 19 200.
4. ``onnxruntime_cuda``: the micro model's ONNX export run by ONNX Runtime's CUDA provider
   against PyTorch (skipped where onnxruntime has no CUDA provider).
5. ``tensorrt``: the TensorRT backend on the micro model (fp32, fp16): build, cached reload,
   outputs against PyTorch (skipped without TensorRT).
6. ``bench``: every variant's paper and small preset at 480×640 in fp32 and bf16 on CUDA:
   latency median/p90, frames/s, peak memory, and for bf16 the difference from fp32.

A time budget (``--budget-s``, default 420 s, under the 8 minutes a check may take) bounds the
whole run: the tests and the bench run in child processes that are stopped when it is spent,
and bench rows not reached are reported as skipped (time budget), never silently dropped.
Results go to ``results/gpu_check/<UTC time>/`` (git-ignored): ``gpu_check.json`` and
``gpu_check.md`` (tables to paste into the README). The exit code is 1 when a step failed.

``--dry-run`` runs on any machine and exercises everything up to the CUDA calls: the
environment report, pytest's collection of the gpu tests, the Triton kernel under Triton's CPU
interpreter, the provider and TensorRT detection, the bench plan (each model built on the meta
device) and the budget and result files. CI runs it (test/scripts/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 420.0
STATUSES = ("passed", "failed", "skipped", "dry-run")


# --------------------------------------------------------------------------- plumbing


class Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of child processes: this repository first on the path, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _stream_json_lines(cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[list[dict], int | None, str]:
    """Run ``cmd``; collect the JSON objects it prints one per line until it exits or the
    timeout passes (then it is killed: the rows printed so far are kept). Returns the objects,
    the exit code (None when killed) and the tail of its other output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=REPO_ROOT)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    rows: list[dict] = []
    other: list[str] = []
    end = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            proc.kill()
            proc.wait()
            return rows, None, "".join(other[-40:])
        if line is None:
            break
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
                continue
            except json.JSONDecodeError:
                pass
        other.append(line)
    return rows, proc.wait(), "".join(other[-40:])


def _step(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one step; an unexpected exception fails that step only, with its traceback."""
    start = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        result = fn(*args)
    except Exception as exc:  # a broken step must not hide the others' results
        result = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-3000:]}
    result = {"name": name, **result, "seconds": round(time.monotonic() - start, 1)}
    print(f"   {result['status']}: {result.get('detail', '')}", flush=True)
    return result


# --------------------------------------------------------------------------- steps


def step_environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        env.update(gpu=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}",
                   gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    for module in ("triton", "onnxruntime", "onnx", "tensorrt", "mamba_ssm", "pytest", "cv2", "yaml", "timm"):
        try:
            mod = __import__(module)
            env[module] = str(getattr(mod, "__version__", "installed"))
        except Exception as exc:  # a broken optional install (e.g. mamba-ssm's extension) is reported, not fatal
            env[module] = f"missing ({type(exc).__name__})"
    if not env["onnxruntime"].startswith("missing"):
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    from ivf_perception.models.ops import has_cuda_scan, has_triton_scan

    env["scan_on_cuda"] = "mamba-ssm" if has_cuda_scan() else "triton" if has_triton_scan() else "chunked"
    status = "passed" if env["cuda_available"] else ("dry-run" if args.dry_run else "failed")
    detail = env.get("gpu", "no CUDA device") + f", torch {env['torch']}, scan on CUDA: {env['scan_on_cuda']}"
    return {"status": status, "detail": detail, "environment": env}


def _gpu_test_files() -> list[str]:
    """Test files that carry the gpu marker (collecting only those keeps ROS-only tests out)."""
    roots = [REPO_ROOT / "test", REPO_ROOT / "training" / "test"]
    return sorted(str(p.relative_to(REPO_ROOT)) for root in roots if root.is_dir()
                  for p in root.rglob("test_*.py") if "mark.gpu" in p.read_text(errors="replace"))


def step_gpu_tests(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "skipped", "detail": "pytest is not installed (`pip install pytest`)"}
    files = _gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    if args.dry_run:
        cmd.append("--collect-only")
    timeout = min(budget.left() * 0.4, 180.0)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env(), cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"the gpu tests did not finish within {timeout:.0f} s", "files": files}
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if args.dry_run:
        return {"status": "dry-run" if proc.returncode == 0 else "failed",
                "detail": f"would run {summary} in {len(files)} files", "files": files,
                "output_tail": proc.stdout[-2000:] + proc.stderr[-2000:]}
    return {"status": "passed" if proc.returncode == 0 else "failed", "detail": summary, "files": files,
            "output_tail": proc.stdout[-4000:] + proc.stderr[-2000:]}


# Runs in a child: the Triton kernel against the reference on the given device; prints one
# JSON line per case, then the timing line (CUDA only).
_TRITON_CHILD = r"""
import json, sys, time, torch
from ivf_perception.models.ops.scan_triton import selective_scan_triton
from ivf_perception.models.ops.selective_scan import selective_scan_chunked, selective_scan_ref
device, quick = sys.argv[1], sys.argv[2] == "quick"

def operands(bsz, dim, n, length, groups, dtype):
    g = torch.Generator().manual_seed(length)
    bc = (bsz, n, length) if groups is None else (bsz, groups, n, length)
    ops = dict(u=torch.randn(bsz, dim, length, generator=g), delta=torch.randn(bsz, dim, length, generator=g) * 0.5 - 3,
               A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1), B=torch.randn(*bc, generator=g),
               C=torch.randn(*bc, generator=g), D=torch.ones(dim), z=torch.randn(bsz, dim, length, generator=g),
               delta_bias=torch.randn(dim, generator=g) * 0.1)
    low = ("u", "delta", "B", "C", "z")
    return {k: v.to(device=device, dtype=dtype if k in low else torch.float32) for k, v in ops.items()}

cases = [(2, 40, 5, 37, 4, torch.float32), (1, 8, 4, 1, 2, torch.float32)]
if not quick:
    cases += [(2, 192, 12, 4800, 4, torch.float32), (2, 192, 12, 4800, None, torch.float32),
              (1, 192, 12, 4800, 4, torch.bfloat16)]
for bsz, dim, n, length, groups, dtype in cases:
    ops = operands(bsz, dim, n, length, groups, dtype)
    y = selective_scan_triton(**ops, delta_softplus=True).float()
    y0 = selective_scan_ref(**ops, delta_softplus=True).float()
    print(json.dumps({"case": f"B{bsz} D{dim} N{n} L{length} G{groups} {str(dtype)[6:]}",
                      "max_abs_err": (y - y0).abs().max().item(), "max_abs_ref": y0.abs().max().item(),
                      "tolerance": 1e-4 if dtype == torch.float32 else 3e-2}), flush=True)
if device == "cuda" and not quick:
    ops = operands(1, 192, 12, 19200, 4, torch.float32)
    def best(fn):
        fn(); torch.cuda.synchronize(); times = []
        for _ in range(5):
            t = time.perf_counter(); fn(); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        return min(times) * 1e3
    print(json.dumps({"timing": True, "L": 19200, "D": 192, "N": 12,
                      "triton_ms": best(lambda: selective_scan_triton(**ops, delta_softplus=True)),
                      "chunked_ms": best(lambda: selective_scan_chunked(**ops, delta_softplus=True))}), flush=True)
"""


def step_triton_scan(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return {"status": "skipped", "detail": "triton is not installed"}
    import torch

    if args.dry_run or not torch.cuda.is_available():
        env, device, mode = _child_env(TRITON_INTERPRET="1"), "cpu", "quick"  # Triton's CPU interpreter
    else:
        env, device, mode = _child_env(), "cuda", "full"
    rows, code, tail = _stream_json_lines([sys.executable, "-c", _TRITON_CHILD, device, mode],
                                          min(budget.left() * 0.3, 120.0), env)
    cases = [r for r in rows if "case" in r]
    timing = next((r for r in rows if r.get("timing")), None)
    bad = [c["case"] for c in cases if not c["max_abs_err"] <= c["tolerance"] * max(1.0, c["max_abs_ref"])]
    if code != 0:
        status, detail = "failed", f"the check process ended with {code}: {tail[-500:]}"
    elif bad:
        status, detail = "failed", f"differs from the reference: {bad}"
    else:
        status = "dry-run" if device == "cpu" else "passed"
        detail = f"{len(cases)} cases match the reference" + (" (Triton interpreter, CPU)" if device == "cpu" else "")
        if timing:
            detail += f"; L=19200: Triton {timing['triton_ms']:.2f} ms, chunked {timing['chunked_ms']:.2f} ms"
    return {"status": status, "detail": detail, "cases": cases, "timing": timing}


def _micro_weights(folder: Path) -> Path:
    """Engine weights of the seeded micro S4Fusion (what the TensorRT and ORT checks run)."""
    import torch

    from ivf_perception.engine import WeightsInfo, save_weights
    from ivf_perception.io.classes import MFNET_CLASSES, MFNET_PALETTE
    from ivf_perception.models import build_model

    torch.manual_seed(1234)
    model = build_model("test_s4fusion", num_classes=len(MFNET_CLASSES))
    info = WeightsInfo(variant="test_s4fusion", preset="test", num_classes=len(MFNET_CLASSES),
                       classes=list(MFNET_CLASSES), palette=list(MFNET_PALETTE))
    return save_weights(model.state_dict(), folder / "test_s4fusion.safetensors", info)


def _random_pair(size: tuple[int, int], device: str) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, 3, *size, generator=g).to(device), torch.rand(1, 1, *size, generator=g).to(device))


def step_onnxruntime_cuda(args: argparse.Namespace, budget: Budget, work: Path) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "skipped", "detail": "onnxruntime is not installed"}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"status": "skipped", "detail": f"onnxruntime {ort.__version__} has no CUDA provider ({providers}); "
                                               "`pip install onnxruntime-gpu` for it"}
    if args.dry_run:
        return {"status": "dry-run", "detail": "would export the micro model and run it with CUDAExecutionProvider"}
    import torch

    from ivf_perception.engine.backends import BackendContext, create_backend
    from ivf_perception.engine.weights import build_model_from_weights

    weights = _micro_weights(work)
    model: Any = build_model_from_weights(weights)[0].eval().cuda()
    rgb, thermal = _random_pair((64, 96), "cuda")
    with torch.inference_mode():
        ref = model(rgb, thermal).fused
    backend = create_backend("onnxruntime", BackendContext(model, torch.device("cuda"), "fp32", weights,
                                                          {"cache_dir": str(work / "cache")}))
    fused = backend.run(rgb, thermal).fused  # exports at this batch's size, then runs
    providers = backend.describe()["providers"]
    backend.release()
    diff = float((fused - ref).abs().max())
    ok = "CUDAExecutionProvider" in providers[:2] and diff <= 1e-4
    return {"status": "passed" if ok else "failed",
            "detail": f"providers {providers}: fused max abs diff {diff:.2e} vs PyTorch", "max_abs_diff": diff}


def step_tensorrt(args: argparse.Namespace, budget: Budget, work: Path) -> dict[str, Any]:
    try:
        import tensorrt
    except ImportError:
        return {"status": "skipped", "detail": "TensorRT is not installed (`pip install tensorrt`)"}
    import torch

    if args.dry_run or not torch.cuda.is_available():
        return {"status": "dry-run", "detail": f"TensorRT {tensorrt.__version__} found; would build the micro model"}
    from ivf_perception.engine.backends import BackendContext, create_backend
    from ivf_perception.engine.weights import build_model_from_weights

    weights = _micro_weights(work)
    model: Any = build_model_from_weights(weights)[0].eval().cuda()
    size = (64, 96)
    rgb, thermal = _random_pair(size, "cuda")
    with torch.inference_mode():
        ref = model(rgb, thermal).fused
    rows = []
    for precision, tol in (("fp32", 1e-3), ("fp16", 3e-2)):
        options = {"cache_dir": str(work / "cache"), "progress_interval_s": 10.0}
        times, outputs = [], []
        for _ in range(2):  # the first backend exports and builds, the second loads the cached engine
            start = time.monotonic()
            backend = create_backend("tensorrt", BackendContext(model, torch.device("cuda"), precision, weights,
                                                                options))
            outputs.append(backend.run(rgb, thermal).fused)  # the engine is made for the first batch's size
            torch.cuda.synchronize()
            times.append(time.monotonic() - start)
            backend.release()
        built_s, cached_s = times
        fused = outputs[0]
        if not torch.equal(outputs[0], outputs[1]):
            tol = -1.0  # a cached engine must give the built one's outputs
        diff = float((fused - ref).abs().max())
        rows.append({"precision": precision, "build_s": round(built_s, 1), "cached_load_s": round(cached_s, 1),
                     "max_abs_diff": diff, "ok": diff <= tol})
    ok = all(r["ok"] for r in rows)
    detail = "; ".join(f"{r['precision']}: build {r['build_s']} s, cached {r['cached_load_s']} s, "
                       f"max diff {r['max_abs_diff']:.2e}" for r in rows)
    return {"status": "passed" if ok else "failed", "detail": f"TensorRT {tensorrt.__version__}: {detail}",
            "rows": rows}


# --------------------------------------------------------------------------- bench


def default_backends() -> list[str]:
    """Eager torch, plus the deployment backends this machine can run: ONNX Runtime when it has
    the CUDA provider, TensorRT when installed. (``compile`` is left to ``--backends``: compiling
    every paper model with CUDA graphs takes minutes of the budget.)"""
    backends = ["torch"]
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            backends.append("onnxruntime")
    except ImportError:
        pass
    try:
        import tensorrt  # noqa: F401

        backends.append("tensorrt")
    except ImportError:
        pass
    return backends


def bench_plan(variants: list[str] | None, presets: list[str], backends: list[str],
               precisions: list[str]) -> list[dict[str, str]]:
    """Rows to measure: variant × preset × backend × precision, presets a family lacks left out."""
    from ivf_perception.models import list_models, list_presets

    names = variants or [v for v in list_models() if not v.startswith("test_")]
    return [{"variant": v, "preset": p, "backend": b, "precision": prec} for v in names
            for p in presets if p in list_presets(v, include_test=True) for b in backends for prec in precisions]


def _bench_args(variant: str, preset: str, backends: list[str], precisions: list[str], size: tuple[int, int],
                repeats: int, cache_dir: str) -> argparse.Namespace:
    """``ivf-perception bench`` arguments for one model on CUDA, through its own parser (so the
    names are checked the same way)."""
    from ivf_perception.cli.bench import build_parser as bench_parser

    return bench_parser().parse_args([
        "--variants", variant, "--presets", preset, "--device", "cuda", "--sizes", f"{size[0]}x{size[1]}",
        "--backends", ",".join(backends), "--precisions", ",".join(precisions), "--repeats", str(repeats),
        "--backend-cache-dir", cache_dir, "--skip-scan", "--fused-vs-chunked",
    ])


def bench_worker(plan: list[dict[str, str]], size: tuple[int, int], repeats: int, dry_run: bool) -> None:
    """Child process: ``ivf-perception bench``'s :func:`run_benchmarks` once per variant/preset on
    CUDA, printing one JSON line per row as each model finishes (the parent enforces the budget).
    Accuracy is the bench's: against eager torch fp32 on the same device and input."""
    from ivf_perception.cli.bench import run_benchmarks
    from ivf_perception.engine.profiling import count_parameters
    from ivf_perception.models import build_model
    from ivf_perception.models.ops import has_cuda_scan, has_triton_scan

    auto_scan = "auto: mamba-ssm" if has_cuda_scan() else "auto: triton" if has_triton_scan() else "auto: chunked"

    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in plan:
        groups.setdefault((row["variant"], row["preset"]), []).append(row)
    with tempfile.TemporaryDirectory(prefix="ivf-gpu-check-bench-") as cache_dir:
        for (variant, preset), rows in groups.items():
            backends = sorted({r["backend"] for r in rows}, key=[r["backend"] for r in rows].index)
            precisions = sorted({r["precision"] for r in rows}, key=[r["precision"] for r in rows].index)
            bench_args = _bench_args(variant, preset, backends, precisions, size, repeats, cache_dir)
            if dry_run:  # everything but the CUDA run: the bench's arguments parsed, the model built on meta
                params = count_parameters(build_model(variant, preset=preset, device="meta")) / 1e6
                for row in rows:
                    print(json.dumps(dict(row, size=f"{size[0]}x{size[1]}", status="dry-run",
                                          params_M=round(params, 2), bench_device=bench_args.device)), flush=True)
                continue
            try:
                result = run_benchmarks(bench_args)
            except Exception as exc:  # one model's failure (e.g. out of memory) is reported, the rest still run
                for row in rows:
                    print(json.dumps(dict(row, size=f"{size[0]}x{size[1]}", status="failed",
                                          detail=f"{type(exc).__name__}: {str(exc)[:300]}")), flush=True)
                continue
            for r in result["models"]:
                print(json.dumps({**{k: r[k] for k in ("variant", "preset", "backend", "precision", "size", "scan",
                                                       "params_M", "latency_ms", "p90_ms", "fps", "build_s",
                                                       "fused_max_abs_diff", "label_agreement_pct",
                                                       "peak_mem_mib")},
                                  "scan": auto_scan if r["scan"] == "auto" else r["scan"], "status": "passed"}),
                      flush=True)
            for note in result["skipped"]:  # e.g. onnxruntime has no bf16 path: the bench says why
                print(json.dumps({"variant": variant, "preset": preset, "skipped_note": note}), flush=True)


def step_bench(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    backends = args.backends or default_backends()
    plan = bench_plan(args.variants, args.presets, backends, args.precisions)
    timeout = max(0.0, budget.left() - 5.0)  # keep a few seconds to write the results
    found: list[dict] = []
    code: int | None = 0
    tail = ""
    if timeout > 0:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--bench-worker", json.dumps(plan),
               "--size", f"{args.size[0]}x{args.size[1]}", "--repeats", str(args.repeats)]
        if args.dry_run:
            cmd.append("--dry-run")
        found, code, tail = _stream_json_lines(cmd, timeout, _child_env())
    notes = [r for r in found if "skipped_note" in r]
    rows = [r for r in found if "skipped_note" not in r]
    done = {(r["variant"], r["preset"], r["backend"], r["precision"]) for r in rows}
    for row in plan:
        if (row["variant"], row["preset"], row["backend"], row["precision"]) in done:
            continue
        combo = f" {row['backend']} {row['precision']} "  # how the bench's skip notes name a row
        note = next((n["skipped_note"] for n in notes if (n["variant"], n["preset"]) == (row["variant"], row["preset"])
                     and combo in n["skipped_note"]), None)
        reason = note or ("time budget" if code is None or timeout <= 0 else f"bench process ended with {code}")
        rows.append(dict(row, size=f"{args.size[0]}x{args.size[1]}", status="skipped", detail=reason))
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    status = "failed" if failed or (code not in (0, None)) else "dry-run" if args.dry_run else "passed"
    verb = "planned (dry run: models built on the meta device)" if args.dry_run else "measured"
    detail = (f"{len(rows) - len(failed) - len(skipped)} rows {verb}, {len(skipped)} skipped, {len(failed)} failed; "
              f"backends {', '.join(backends)}")
    if code not in (0, None):
        detail += f"; bench process: {tail[-300:]}"
    return {"status": status, "detail": detail, "rows": rows}


# --------------------------------------------------------------------------- report


def format_markdown(report: dict[str, Any]) -> str:
    env: dict[str, Any] = next((s.get("environment", {}) for s in report["steps"] if s["name"] == "environment"), {})
    lines = [f"# GPU check {report['started']}", "",
             f"GPU: {env.get('gpu', 'none')} (compute capability {env.get('compute_capability', '-')}), "
             f"torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, Triton {env.get('triton', '-')}, "
             f"TensorRT {env.get('tensorrt', '-')}, onnxruntime {env.get('onnxruntime', '-')}"
             + (" — DRY RUN, nothing ran on a GPU" if report["dry_run"] else ""), "",
             "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {str(s.get('detail', '')).replace('|', '/')} |"
              for s in report["steps"]]
    bench = next((s for s in report["steps"] if s["name"] == "bench"), None)
    if bench and bench.get("rows"):
        lines += ["", "| variant | preset | backend | precision | size | scan | params (M) | latency ms (p50 / p90) "
                  "| frames/s | build s | fused max abs diff vs torch fp32 | labels equal to torch fp32 "
                  "| peak GPU MiB | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            def num(key: str, spec: str, row: dict[str, Any] = r) -> str:
                return "-" if row.get(key) is None else format(row[key], spec)

            lat = f"{num('latency_ms', '.2f')} / {num('p90_ms', '.2f')}" if r.get("latency_ms") is not None else "-"
            equal = f"{num('label_agreement_pct', '.3f')} %" if r.get("label_agreement_pct") is not None else "-"
            status = r["status"] + (f" ({r['detail']})" if r.get("detail") else "")
            lines.append(f"| {r['variant']} | {r['preset']} | {r['backend']} | {r['precision']} | {r['size']} "
                         f"| {r.get('scan', '-')} | {num('params_M', '.2f')} | {lat} | {num('fps', '.1f')} "
                         f"| {num('build_s', '.1f')} | {num('fused_max_abs_diff', '.1e')} | {equal} "
                         f"| {num('peak_mem_mib', '.0f')} | {status.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 480x640, got {text!r}") from exc
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default results/gpu_check/<UTC time>, git-ignored)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget of the whole run")
    p.add_argument("--dry-run", action="store_true", help="everything up to the CUDA calls (runs on a CPU)")
    p.add_argument("--variants", nargs="+", default=None, help="bench families (default: all registered)")
    p.add_argument("--presets", nargs="+", default=["paper", "small"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--backends", nargs="+", default=None, choices=["torch", "compile", "onnxruntime", "tensorrt"],
                   help="bench backends (default: torch, plus onnxruntime with a CUDA provider and tensorrt "
                        "when installed)")
    p.add_argument("--size", type=_parse_size, default=(480, 640))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip", nargs="+", default=[], metavar="STEP",
                   choices=["gpu_tests", "triton_scan", "onnxruntime_cuda", "tensorrt", "bench"])
    p.add_argument("--bench-worker", default=None, help=argparse.SUPPRESS)  # the bench's child process
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bench_worker is not None:
        bench_worker(json.loads(args.bench_worker), args.size, args.repeats, args.dry_run)
        return 0
    budget = Budget(args.budget_s)
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or REPO_ROOT / "results" / "gpu_check" / started
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": started, "dry_run": args.dry_run, "budget_s": args.budget_s,
                              "argv": sys.argv[1:] if argv is None else list(argv), "steps": []}
    with tempfile.TemporaryDirectory(prefix="ivf-gpu-check-") as tmp:
        work = Path(tmp)
        steps: list[tuple[str, Callable[..., dict[str, Any]], tuple]] = [
            ("environment", step_environment, (args,)),
            ("gpu_tests", step_gpu_tests, (args, budget)),
            ("triton_scan", step_triton_scan, (args, budget)),
            ("onnxruntime_cuda", step_onnxruntime_cuda, (args, budget, work)),
            ("tensorrt", step_tensorrt, (args, budget, work)),
            ("bench", step_bench, (args, budget)),
        ]
        for name, fn, fn_args in steps:
            if name in args.skip:
                report["steps"].append({"name": name, "status": "skipped", "detail": "--skip", "seconds": 0.0})
                continue
            report["steps"].append(_step(name, fn, *fn_args))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(format_markdown(report))
    print(f"\nresults: {out / 'gpu_check.md'}\n")
    print(format_markdown(report))
    return 1 if any(s["status"] == "failed" for s in report["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
