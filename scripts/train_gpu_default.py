#!/usr/bin/env python3
"""Train the bundled GPU default (``s4fusion_gpu_default``) on a lent CUDA machine, in one command.

Run from the repository root with the machine's own Python (no virtual environment, nothing to
install; the folder LLVIP pairs come from is ``--data``)::

    make train-gpu-default                 # = PYTHONPATH=.:training python3 scripts/train_gpu_default.py
    PYTHONPATH=.:training python3 scripts/train_gpu_default.py --minutes 8 --data DIR --out DIR
    PYTHONPATH=.:training python3 scripts/train_gpu_default.py --dry-run   # any machine, ~20 s

What it does, through the same ``ivf-train`` commands a user runs:

1. checks the Python packages the trainer imports (torch, numpy, opencv, pyyaml, safetensors,
   timm, tqdm; timm brings pyyaml and, through huggingface_hub, tqdm) and the CUDA device, and
   stops with the list of what is missing before spending any of the lease;
2. measures the time per step: ``ivf-train run training/recipes/s4fusion_gpu_default.yaml``
   stopped after a warm-up and some timed steps (times from the run's ``log.jsonl``, so the
   data loader, cuDNN/Triton warm-up and the optimiser are all in it);
3. trains the recipe with ``max_steps`` set to what fits the rest of ``--minutes`` (so the
   learning-rate schedule ends where the run ends), validating once at the end;
4. exports ``s4fusion_gpu_default.safetensors`` + sidecar with float16 storage, refuses a file
   over 8 MB, and checks that ``weights: default`` on cuda resolves to it and the engine runs it;
5. writes ``train_gpu_default.json`` (environment, timing, steps, validation, file size) and the
   run's log and summary next to the file, and prints what to do with them.

``--minutes`` is the wall-clock budget of the whole script (default 8: a command may run 10
minutes on a lent machine). Results go to ``results/gpu_default/<UTC time>/`` (git-ignored) or
``--out``; the run directories (checkpoints) stay under ``runs/gpu_default/`` (``--runs``).

``--dry-run`` does every step on the CPU with 64 px crops, batches of 2, one warm-up and one
timed step, and two training steps: the test (training/test/test_train_gpu_default.py) runs it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "training" / "recipes" / "s4fusion_gpu_default.yaml"
STEM = "s4fusion_gpu_default"  # the weights table's cuda entry (ivf_perception/engine/default_weights.py)
MAX_BYTES = 8_000_000  # issue 18: the GPU default ships in at most 8 MB
REQUIRED = {"torch": "torch", "numpy": "numpy", "cv2": "opencv-python(-headless)", "yaml": "pyyaml",
            "safetensors": "safetensors", "timm": "timm", "tqdm": "tqdm"}
"""Module -> package the trainer and exporter import. Found by running ``--dry-run`` and listing the
third-party modules it loaded (timm also brings torchvision, pillow and huggingface_hub); it
also runs with onnx, onnxruntime, tensorboard, rosbags, rclpy, scipy and pytest made unimportable."""

DRY_RUN = ["device=cpu", "batch_size=2", "crop=64", "num_workers=0", "data.generated.val_count=2",
           "data.val_max_pairs=1"]
"""Overrides of ``--dry-run``: the recipe's pipeline on the CPU in seconds."""


def _missing_packages() -> list[str]:
    missing = []
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # the reason too: a package can be present but broken
            missing.append(f"{module} (pip package {package}: {exc})")
    return missing


def _train_cli(args: list[str]) -> None:
    """``ivf-train ARGS`` in this process; a failure stops the script with its exit status."""
    from ivf_training.cli import main

    print("+ ivf-train " + " ".join(args), flush=True)
    status = main(args)
    if status != 0:
        raise SystemExit(f"train_gpu_default: ivf-train {args[0]} failed with status {status}")


def _step_times(run_dir: Path) -> dict[int, float]:
    """Step -> wall-clock time of the run's train log lines."""
    lines = (json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip())
    return {entry["step"]: entry["time"] for entry in lines if entry.get("kind") == "train"}


def measure_step_s(overrides: list[str], name: str, out_dir: Path, warmup: int, timed: int) -> float:
    """Seconds per training step of the recipe on this machine, after ``warmup`` steps.

    A run with an unreachable ``max_steps`` (its schedule is irrelevant here) stopped at
    ``warmup + timed`` with a log line per step; nothing of it is kept for the real run.
    """
    _train_cli(["run", str(RECIPE), *overrides, f"name={name}", f"out_dir={out_dir}", "max_steps=1000000",
                "log_every=1", "ckpt_every=0", "--stop-at-step", str(warmup + timed)])
    times = _step_times(out_dir / name)
    return (times[warmup + timed] - times[warmup]) / timed


def plan_steps(seconds_left: float, step_s: float, reserve_s: float) -> int:
    """Training steps that fit ``seconds_left`` less ``reserve_s`` (start-up of the run, the
    final validation, export and checks) at ``step_s`` per step.

    Raises:
        SystemExit: fewer than 100 steps fit (a model that learnt nothing is not a default).
    """
    steps = int((seconds_left - reserve_s) / step_s)
    if steps < 100:
        raise SystemExit(f"train_gpu_default: only {steps} steps of {step_s:.3f} s fit the budget "
                         f"({seconds_left:.0f} s left, {reserve_s:.0f} s reserved); raise --minutes")
    return steps


def check_weights(path: Path, device: str, size: tuple[int, int]) -> dict[str, Any]:
    """What a robot gets: ``weights: default`` on cuda resolves to this file (the default table,
    with the results folder as the weights folder) and the engine fuses and segments a pair of
    ``size`` (H, W) with it on ``device``."""
    import numpy as np

    from ivf_perception.engine import Engine
    from ivf_perception.engine.default_weights import resolve_default_weights

    choice = resolve_default_weights("cuda", directory=path.parent)
    if choice.path != path:
        raise SystemExit(f"train_gpu_default: weights 'default' on cuda resolved to {choice.path}, not {path}")
    engine = Engine("auto", weights=choice.path, device=device)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, size, dtype=np.uint8)
    engine.infer(rgb, thermal)  # warm-up
    result = engine.infer(rgb, thermal)
    if result.labels is None or result.fused.shape != (*size, 3):
        raise SystemExit(f"train_gpu_default: the engine's output on {path} is not a fused image with labels")
    return {"resolved": choice.reason, "engine_device": str(engine.device), "engine_size": list(size),
            "engine_timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}}


def _environment(device: str) -> dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "cpu_count": os.cpu_count()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole script")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="folder holding llvip/train and llvip/test (RoadScene and TNO are never read)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/gpu_default/<UTC time>/")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "gpu_default",
                        help="where the timing run and the training run keep their run directories")
    parser.add_argument("--warmup-steps", type=int, default=30, help="steps before the timed ones")
    parser.add_argument("--timed-steps", type=int, default=40, help="steps that set the time per step")
    parser.add_argument("--reserve-s", type=float, default=60.0,
                        help="seconds kept for the run's start-up, the final validation, export and checks")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for both runs, e.g. --set amp=fp16 --set batch_size=16 "
                             "(what to change if bf16 or the memory gives trouble)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU in seconds (CI)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    from ivf_perception.openmp import prefer_passive_waiting

    prefer_passive_waiting()  # before torch is imported (as ivf-train does)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO_ROOT / "results" / "gpu_default" / stamp).resolve()

    missing = _missing_packages()
    if missing:
        print("train_gpu_default: this Python lacks " + ", ".join(missing) + ". Nothing can be installed on a "
              "lent machine: carry a `pip install --target DIR` of them for its Python version and add DIR to "
              "PYTHONPATH.", file=sys.stderr)
        return 2
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("train_gpu_default: no CUDA device (torch.cuda.is_available() is False); --dry-run runs on a CPU",
              file=sys.stderr)
        return 2
    llvip = args.data.resolve() / "llvip"
    if not (llvip / "train").is_dir() or not (llvip / "test").is_dir():
        print(f"train_gpu_default: {llvip}/train and {llvip}/test not found (see --data; on a lent machine "
              "carry a copy of ../shared/data/llvip, README \"GPU default: how to train it\")", file=sys.stderr)
        return 2

    overrides = [f"data.train_real=[{llvip / 'train'}]", f"data.val_real=[{llvip / 'test'}]",
                 *(DRY_RUN if args.dry_run else ["device=cuda"]), *args.overrides]
    warmup, timed = (1, 1) if args.dry_run else (args.warmup_steps, args.timed_steps)
    runs = args.runs.resolve()
    step_s = measure_step_s(overrides, f"{stamp}-timing", runs, warmup, timed)
    left = args.minutes * 60 - (time.monotonic() - start)
    steps = 2 if args.dry_run else plan_steps(left, step_s, args.reserve_s)
    print(f"train_gpu_default: {step_s:.3f} s per step after {warmup} warm-up steps; {left:.0f} s left: "
          f"training {steps} steps", flush=True)

    name = f"{STEM}-{stamp}"
    t_train = time.monotonic()
    _train_cli(["run", str(RECIPE), *overrides, f"name={name}", f"out_dir={runs}", f"max_steps={steps}"])
    train_s = time.monotonic() - t_train
    weights = out / f"{STEM}.safetensors"
    _train_cli(["export", str(runs / name), "--out", str(weights), "--checkpoint", "last",
                "--storage-dtype", "float16"])
    size = weights.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"train_gpu_default: {weights} is {size / 1e6:.2f} MB, over the 8 MB limit")
    check = check_weights(weights, device, (64, 80) if args.dry_run else (480, 640))

    summary = json.loads((runs / name / "summary.json").read_text())
    (out / "run").mkdir(parents=True, exist_ok=True)
    for kept in ("config.yaml", "data.json", "origin.json", "log.jsonl", "summary.json"):
        shutil.copy2(runs / name / kept, out / "run" / kept)
    report = {"dry_run": args.dry_run, "date": stamp, "overrides": overrides, "environment": _environment(device),
              "recipe": RECIPE.name, "step_s": round(step_s, 4), "warmup_steps": warmup, "timed_steps": timed,
              "steps": steps, "train_s": round(train_s, 1), "total_s": round(time.monotonic() - start, 1),
              "bytes": size, "validation": summary["last_val"], **check}
    (out / "train_gpu_default.json").write_text(json.dumps(report, indent=2) + "\n")
    val = summary["last_val"]
    print(f"train_gpu_default: {steps} steps in {train_s:.0f} s; validation mIoU {val.get('mIoU', float('nan')):.4f}, "
          f"Qabf {val.get('fusion/Qabf', float('nan')):.4f}; {weights.name} {size / 1e6:.2f} MB (float16)")
    print(f"""results in {out}:
  {weights.name} + {weights.with_suffix('.json').name}   the GPU default
  train_gpu_default.json, run/                          timing, validation, the run's log
next, on the machine with the repository's .venv, from where these files were brought back:
  cp {weights.name} {weights.with_suffix('.json').name} ivf_perception/weights/
  .venv/bin/python scripts/quality_report.py ivf_perception/weights/{weights.name} --write-sidecar
  (then the README's "Bundled weights" tables, and commit both files)""")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "training")]  # also without PYTHONPATH (no venv, no install)
    sys.exit(main())
