"""``ivf-train bench``: training throughput per registered variant, and the data loader's share.

Each variant trains a few steps of its generated-scenes recipe (``training/recipes/<variant>*
_generated.yaml``, the last one in name order, so MAFS uses stage II; the built-in defaults when
none exists) with the requested preset, batch and crop, through the trainer's own loader and
training step (augmentation, loss, AMP, optimiser). Reported per variant and device:

* images/s: training images per second of wall time, warm-up steps excluded;
* step time, and the time spent waiting for the next batch (data loading, scene generation
  and augmentation in ``num_workers`` processes, or in the main process when 0);
* the data share: waiting time / step time. Above ~20 % the GPU (or CPU) waits for data: raise
  ``num_workers``.

Nothing is written to disk except a temporary run directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ivf_perception.models import list_models
from ivf_training.config import TrainConfig, absolutize_paths, apply_overrides, config_from_dict, read_recipe
from ivf_training.trainer import Trainer

__all__ = ["BenchRow", "bench_variant", "recipe_for", "format_rows", "run_bench"]

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
"""The recipes of the source tree (absent when the package is installed without them)."""


@dataclass(frozen=True)
class BenchRow:
    """One measurement (seconds are means over the timed steps)."""

    variant: str
    preset: str
    device: str
    precision: str
    batch_size: int
    crop: int
    images_per_s: float
    step_s: float
    data_s: float

    @property
    def data_share(self) -> float:
        """Waiting for data as a fraction of the step time."""
        return self.data_s / self.step_s if self.step_s > 0 else 0.0


def recipe_for(variant: str, recipes: Path = RECIPES) -> Path | None:
    """The generated-scenes recipe of ``variant`` (the last of ``<variant>*_generated.yaml``)."""
    found = sorted(recipes.glob(f"{variant}_*generated.yaml")) if recipes.is_dir() else []
    return found[-1] if found else None


def _bench_config(variant: str, preset: str, device: str, batch_size: int, crop: int, steps: int,
                  num_workers: int, out_dir: Path, recipes: Path) -> TrainConfig:
    """The variant's recipe cut down to a throughput measurement: generated scenes only (no real
    or benchmark folders, which may be absent), no validation, no initial weights."""
    recipe = recipe_for(variant, recipes)
    data: dict[str, Any] = read_recipe(recipe) if recipe else {}
    data.setdefault("model", {})["init_from"] = None
    loss = data.get("loss", {})
    if loss.get("teacher_weights") and not Path(loss["teacher_weights"]).is_file():
        loss["teacher_weights"] = None  # the teacher's own cost is left out where its weights are absent
    overrides = [
        f"model.variant={variant}", f"model.preset={preset}", f"device={device}", f"batch_size={batch_size}",
        f"crop={crop}", "crop_width=null", f"max_steps={steps}", f"num_workers={num_workers}",
        f"data.generated.train_count={batch_size * steps}", "data.generated.val_count=0",
        "data.train_folders=[]", "data.val_folders=[]", "data.train_real=[]", "data.val_real=[]",
        "best_metric=loss/total", "best_mode=min", "val_every=0", "ckpt_every=0", "progress=false",
        "tensorboard=false", "accum_steps=1", f"out_dir={out_dir}", "name=bench",
    ]
    return absolutize_paths(config_from_dict(apply_overrides(data, overrides)))


def bench_variant(variant: str, *, preset: str = "small", device: str = "cpu", batch_size: int = 2, crop: int = 128,
                  steps: int = 3, warmup: int = 1, num_workers: int = 0, recipes: Path = RECIPES) -> BenchRow:
    """Time ``warmup + steps`` training steps of ``variant`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="ivf-bench-") as tmp:
        cfg = _bench_config(variant, preset, device, batch_size, crop, warmup + steps, num_workers, Path(tmp), recipes)
        trainer = Trainer.from_config(cfg, Path(tmp) / "bench")
        trainer.model.train()
        trainer.loss_fn.train()
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        batches = iter(trainer._loader(0, 0))  # the trainer's own loader and step: what training costs
        data_s = step_s = 0.0
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            trainer._train_step(batch)
            trainer.step += 1
            sync()
            t2 = time.perf_counter()
            if i >= warmup:
                data_s += t1 - t0
                step_s += t2 - t0
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
        return BenchRow(variant, cfg.model.preset, str(trainer.device), precision, batch_size, cfg.crop,
                        batch_size * steps / step_s, step_s / steps, data_s / steps)


def format_rows(rows: Sequence[BenchRow], notes: Sequence[str] = ()) -> str:
    """A Markdown table of the measurements (paste into training/README.md)."""
    lines = ["| variant | preset | device | precision | batch | crop | images/s | step (ms) | data (ms) | data share |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.preset} | {r.device} | {r.precision} | {r.batch_size} | {r.crop} | "
                     f"{r.images_per_s:.2f} | {1000 * r.step_s:.0f} | {1000 * r.data_s:.0f} | "
                     f"{100 * r.data_share:.0f} % |")
    return "\n".join([*lines, *([""] + list(notes) if notes else [])])


def run_bench(args: argparse.Namespace) -> str:
    """Measure every requested variant on every requested device (the options of ``ivf-train
    bench``); returns the Markdown table."""
    variants = args.variants or [v for v in list_models() if not v.startswith("test_")]
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    rows = [bench_variant(v, preset=args.preset, device=d, batch_size=args.batch_size, crop=args.crop,
                          steps=args.steps, warmup=args.warmup, num_workers=args.num_workers)
            for d in devices for v in variants]
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    machine = platform.processor() or platform.machine()
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads ({machine}{gpu}); {args.steps} timed "
             f"steps after {args.warmup} warm-up, num_workers={args.num_workers}; generated scenes, each variant's "
             "generated recipe (loss, optimiser, AMP auto)."]
    table = format_rows(rows, notes)
    if args.out is not None:
        args.out.write_text(table + "\n")
    return table
