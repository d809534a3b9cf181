"""scripts/train_gpu_default.py on a CPU: ``--dry-run`` runs the whole GPU-default pipeline.

No GPU here: the dry run measures the time per step, trains two steps of the recipe at 64 px,
exports with float16 storage and checks the file as the script does on a GPU. This test then
loads the file the way a robot with a GPU would get it: ``weights: default`` resolved for a
``cuda`` device from a weights folder that holds it (the resolver only reads the device kind),
and the engine runs it (on the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import train_gpu_default

from ivf_perception.engine import Engine
from ivf_perception.engine.default_weights import DefaultWeights, resolve_default_weights
from ivf_perception.engine.weights import read_sidecar

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "train_gpu_default.py"


def write_pairs(root: Path, count: int) -> None:
    """``count`` small random RGB/thermal pairs in the LLVIP layout (``vi/``, ``ir/``)."""
    rng = np.random.default_rng(1)
    for kind, channels in (("vi", 3), ("ir", 1)):
        (root / kind).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (96, 128, channels), dtype=np.uint8)
            cv2.imwrite(str(root / kind / f"{i:04d}.png"), image)


def test_dry_run_trains_exports_and_the_file_is_the_cuda_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_pairs(data / "llvip" / "train", 3)
    write_pairs(data / "llvip" / "test", 2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'training'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--data", str(data), "--out", str(out),
                           "--runs", str(tmp_path / "runs"), "--set", "seed=3"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cp s4fusion_gpu_default.safetensors s4fusion_gpu_default.json ivf_perception/weights/" in proc.stdout
    assert "scripts/quality_report.py ivf_perception/weights/s4fusion_gpu_default.safetensors" in proc.stdout

    weights = out / "s4fusion_gpu_default.safetensors"
    info = read_sidecar(weights)
    assert (info.variant, info.preset, info.storage_dtype, info.num_classes) == ("s4fusion", "small", "float16", 9)
    assert info.recipe["name"].startswith("s4fusion_gpu_default-") and info.metrics["step"] == 2
    assert weights.stat().st_size <= 8_000_000
    report = json.loads((out / "train_gpu_default.json").read_text())
    assert report["dry_run"] is True and report["steps"] == 2 and report["step_s"] > 0
    assert report["overrides"][-1] == "seed=3" and info.recipe["seed"] == 3
    assert report["resolved"] == "weights 'default' on cuda: using the GPU default s4fusion_gpu_default"
    assert {p.name for p in (out / "run").iterdir()} == {"config.yaml", "data.json", "origin.json", "log.jsonl",
                                                         "summary.json"}
    assert info.lineage == [{"run": info.recipe["name"], "recipe": "training/recipes/s4fusion_gpu_default.yaml",
                             "overrides": report["overrides"] + [f"name={info.recipe['name']}",
                                                                 f"out_dir={tmp_path / 'runs'}", "max_steps=2"],
                             "max_steps": 2, "started_from": None}]

    bundled = tmp_path / "weights"  # a weights folder holding both defaults, as the package will
    bundled.mkdir()
    for f in (weights, weights.with_suffix(".json")):
        shutil.copy2(f, bundled / f.name)
    table = (DefaultWeights("cpu_default", "cpu"), DefaultWeights("s4fusion_gpu_default", "cuda"))
    choice = resolve_default_weights("cuda", table=table, directory=bundled)
    assert choice.path == bundled / "s4fusion_gpu_default.safetensors"
    engine = Engine("auto", weights=choice.path, device="cpu")
    assert engine.preset == "small"
    rng = np.random.default_rng(2)
    result = engine.infer(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8),
                          rng.integers(0, 256, (60, 80), dtype=np.uint8))
    assert result.fused.shape == (60, 80, 3) and result.labels is not None and result.labels.max() < 9


def test_steps_fill_the_budget_left_and_too_few_are_refused() -> None:
    assert train_gpu_default.plan_steps(420.0, 0.14, 60.0) == 2571
    with pytest.raises(SystemExit, match="only 42 steps of 1.000 s fit the budget"):
        train_gpu_default.plan_steps(102.0, 1.0, 60.0)


def test_missing_packages_stop_the_script_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # main() sets it
    monkeypatch.setattr(train_gpu_default, "REQUIRED", {"yaml": "pyyaml", "no_such_module_here": "no-such-package"})
    assert train_gpu_default.main(["--dry-run", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]) == 2
    assert "lacks no_such_module_here (pip package no-such-package: No module named" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
