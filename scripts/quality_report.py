"""Quality of engine weights on data their training never saw, measured with the user commands.

Why a script that runs the commands instead of calling library functions: the issue's promise
("measured with ``fuse`` + ``eval-fusion``") is about what a user gets from those commands, so
the report runs exactly them (and ``ivf-train eval --dataset generated`` for the label maps):

* the eleven fusion metrics on RoadScene (50 pairs) and TNO (25) for each weights file and for
  the pixel average and pixel maximum (``fuse --baseline``);
* mIoU and per-class IoU on held-out generated seeds (no training recipe uses them).

It prints Markdown tables (the README's "Bundled weights" tables are pasted from it) and, with
``--write-sidecar``, stores the numbers and how they were measured in each file's sidecar
(``quality``), so a shipped file carries its own report.

    python scripts/quality_report.py ivf_perception/weights/s4fusion_tiny_default.safetensors \\
        [--data ../shared/data] [--seeds 7 11] [--count 100] [--write-sidecar] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from ivf_perception.engine.weights import read_sidecar, write_sidecar

REAL_SETS = {"roadscene": 50, "tno": 25}
"""Held-out real pair sets under the data folder and their pair counts (DESIGN §6)."""

FUSION_METRICS = ("EN", "SD", "SF", "AG", "MI", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM")
CLASS_NAMES = ("car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")

_BIN = Path(sys.executable).parent


def _run(*args: str | Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"quality_report: {' '.join(str(a) for a in args)} failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")


def _fusion_scores(data: Path, name: str, work: Path, fuse_args: list[str], threads: int) -> dict[str, float]:
    """Mean of the eleven metrics of ``fuse`` + ``eval-fusion`` on one held-out set."""
    ir, vi = data / name / "ir", data / name / "vi"
    out = work / name
    _run(_BIN / "ivf-perception", "fuse", "--ir", ir, "--vi", vi, "--out", out, "--threads", str(threads),
         *fuse_args, threads=threads)
    report = work / f"{name}.json"
    _run(_BIN / "ivf-perception", "eval-fusion", "--ir", ir, "--vi", vi, "--fused", out / "fused",
         "--json", report, threads=threads)
    result = json.loads(report.read_text())
    if len(result["per_image"]) != REAL_SETS[name]:
        raise SystemExit(f"quality_report: {name} scored {len(result['per_image'])} pairs, expected {REAL_SETS[name]}")
    return {k: round(float(result["mean"][k]), 4) for k in FUSION_METRICS}


def _segmentation_scores(weights: Path, seed: int, count: int, work: Path, threads: int) -> dict[str, float]:
    """mIoU (classes 1-8) and per-class IoU of ``ivf-train eval`` on generated scenes of ``seed``."""
    report = work / f"generated-{seed}.json"
    _run(_BIN / "ivf-train", "eval", weights, "--dataset", "generated", "-o", f"config={{seed: {seed}}}",
         "-o", f"count={count}", "--threads", str(threads), "--out", report, threads=threads)
    metrics = json.loads(report.read_text())["metrics"]
    return {"mIoU": round(float(metrics["mIoU"]), 4),
            **{f"IoU/{c}": round(float(metrics[f"IoU/{c}"]), 4) for c in CLASS_NAMES}}


def _fusion_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| set | method | " + " | ".join(FUSION_METRICS) + " |", "|---|---|" + "---|" * len(FUSION_METRICS)]
    for name in REAL_SETS:
        for method, sets in rows.items():
            scores = sets[name]
            lines.append(f"| {name} ({REAL_SETS[name]}) | {method} | "
                         + " | ".join(f"{scores[k]:.3f}" for k in FUSION_METRICS) + " |")
    return "\n".join(lines)


def _segmentation_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    head = ["mIoU", *CLASS_NAMES]
    lines = ["| weights | seed | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for method, seeds in rows.items():
        for seed, scores in seeds.items():
            lines.append(f"| {method} | {seed} | " + " | ".join(
                f"{scores['mIoU' if h == 'mIoU' else f'IoU/{h}']:.3f}" for h in head) + " |")
    return "\n".join(lines)


def _write_quality(weights: Path, quality: dict[str, Any]) -> None:
    """Store ``quality`` in the sidecar (every other field untouched)."""
    info = read_sidecar(weights)
    info.quality = quality
    write_sidecar(weights, info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", type=Path, help="engine weights (.safetensors with sidecar)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding roadscene/ and tno/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11], help="held-out generated scene seeds")
    parser.add_argument("--count", type=int, default=100, help="generated scenes per seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-sidecar", action="store_true", help="store the results in each sidecar")
    args = parser.parse_args()
    missing = [str(args.data / n) for n in REAL_SETS if not (args.data / n).is_dir()]
    if missing:
        raise SystemExit(f"quality_report: held-out sets not found: {', '.join(missing)} (see --data)")

    fusion: dict[str, dict[str, dict[str, float]]] = {}
    segmentation: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for mode, label in (("mean", "pixel average"), ("max", "pixel maximum")):
            fusion[label] = {n: _fusion_scores(args.data, n, work / mode, ["--baseline", mode], args.threads)
                             for n in REAL_SETS}
        for weights in args.weights:
            label = weights.stem
            run = work / label
            fusion[label] = {n: _fusion_scores(args.data, n, run, ["--weights", str(weights), "--device", "cpu"],
                                               args.threads) for n in REAL_SETS}
            segmentation[label] = {f"seed {s}": _segmentation_scores(weights, s, args.count, run, args.threads)
                                   for s in args.seeds}
            if args.write_sidecar:
                _write_quality(weights, {
                    "measured_with": "scripts/quality_report.py: ivf-perception fuse + eval-fusion (SSIM data_range "
                                     "255); ivf-train eval --dataset generated",
                    "date": date.today().isoformat(),
                    "device": f"cpu ({platform.machine()})",
                    "held_out_real_pairs": {n: {"pairs": REAL_SETS[n], "model": fusion[label][n],
                                                "pixel_average": fusion["pixel average"][n],
                                                "pixel_maximum": fusion["pixel maximum"][n]} for n in REAL_SETS},
                    "held_out_generated": {"scenes_per_seed": args.count, **segmentation[label]},
                })
    print(_fusion_table(fusion))
    print()
    print(_segmentation_table(segmentation))


if __name__ == "__main__":
    main()
