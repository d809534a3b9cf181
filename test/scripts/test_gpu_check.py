"""scripts/gpu_check.py on a CPU: ``--dry-run`` runs every step up to its CUDA calls.

No GPU here: the dry run is what CI can check (environment report, pytest's collection of the
gpu tests, the Triton kernel under Triton's CPU interpreter, provider/TensorRT detection, the
bench plan with every model built on the meta device, the time budget and the result files).
The CUDA parts themselves run when ``make gpu-check`` is run on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gpu_check
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def run_script(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=REPO_ROOT)
    out = Path(args[args.index("--out") + 1])
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}
    return proc, report


@pytest.mark.slow
def test_dry_run_exercises_every_step(tmp_path: Path) -> None:
    proc, report = run_script("--dry-run", "--out", str(tmp_path), "--variants", "s4fusion", "mafs",
                              "--backends", "torch")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "gpu_tests", "triton_scan", "onnxruntime_cuda", "tensorrt", "bench"]
    assert report["dry_run"] is True
    assert all(s["status"] in ("dry-run", "skipped", "passed") for s in steps.values()), steps
    assert "torch" in steps["environment"]["environment"]
    # pytest collected the gpu-marked tests of the files that have them
    assert steps["gpu_tests"]["status"] == "dry-run" and "test/ops/test_scan_triton.py" in steps["gpu_tests"]["files"]
    assert "tests collected" in steps["gpu_tests"]["detail"]
    # the Triton kernel ran (interpreted) and matched the reference
    assert steps["triton_scan"]["status"] == "dry-run" and len(steps["triton_scan"]["cases"]) == 2
    # every variant × paper/small × backend × fp32/bf16 row is planned: the bench's own parser took
    # the arguments of its CUDA run, and the model was built on the meta device
    rows = steps["bench"]["rows"]
    assert {(r["variant"], r["preset"], r["backend"], r["precision"]) for r in rows} == {
        (v, p, "torch", q) for v in ("s4fusion", "mafs") for p in ("paper", "small") for q in ("fp32", "bf16")}
    assert all(r["status"] == "dry-run" and r["params_M"] > 0 and r["size"] == "480x640"
               and r["bench_device"] == "cuda" for r in rows)
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN, nothing ran on a GPU" in markdown and "| mafs | paper | torch | bf16 | 480x640 |" in markdown


def test_spent_budget_skips_the_bench_rows_cleanly(tmp_path: Path) -> None:
    proc, report = run_script("--dry-run", "--out", str(tmp_path), "--budget-s", "0", "--variants", "s4fusion",
                              "--backends", "torch",
                              "--skip", "gpu_tests", "triton_scan", "onnxruntime_cuda", "tensorrt")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = next(s for s in report["steps"] if s["name"] == "bench")
    assert len(bench["rows"]) == 4
    assert all(r["status"] == "skipped" and r["detail"] == "time budget" for r in bench["rows"])
    assert "| s4fusion | paper | torch | fp32 | 480x640 | - | - | - | - | - | - | - | - | skipped (time budget) |" \
        in (tmp_path / "gpu_check.md").read_text()


def test_a_child_past_its_time_is_stopped_and_its_rows_kept() -> None:
    child = ("import json, time; print(json.dumps({'row': 1}), flush=True); print('log line', flush=True); "
             "time.sleep(60)")
    rows, code, tail = gpu_check._stream_json_lines([sys.executable, "-c", child], 5.0, gpu_check._child_env())
    assert rows == [{"row": 1}] and code is None and "log line" in tail


def test_bad_size_is_refused() -> None:
    with pytest.raises(SystemExit):
        gpu_check.build_parser().parse_args(["--size", "480by640"])


def test_default_backends_follow_what_is_installed() -> None:
    """torch always; onnxruntime only with a CUDA provider; tensorrt only when it imports."""
    backends = gpu_check.default_backends()
    assert backends[0] == "torch"
    try:
        import onnxruntime

        has_cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    assert ("onnxruntime" in backends) == has_cuda_ep
