"""Model cost measurements for the benchmark command: parameters, FLOPs, latency, memory.

Latency is measured through the Engine (pre-processing, inference, post-processing), the way
a node or replay pays it, after warm-up; medians over repeats resist one-off stalls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ivf_perception.engine.engine import Engine

__all__ = ["LatencyStats", "compare_engines", "count_parameters", "count_gmacs", "measure_latency"]


@dataclass
class LatencyStats:
    """Latency of one configuration in milliseconds (median over repeats) and derived FPS."""

    median_ms: float
    p90_ms: float
    stages_ms: dict[str, float]
    peak_mem_mib: float | None

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, height: int, width: int, device: torch.device | str = "cpu",
                guided: bool = False) -> float:
    """Multiply-accumulates of one forward pass, in G (fvcore's "GFLOPs" convention).

    torch's FlopCounterMode counts convolutions, linear layers and matmuls as 2 FLOPs per MAC;
    halving gives the number most papers report. Element-wise work (activations, the
    selective-scan recurrence itself) is not counted, as in fvcore. The size is padded up to the
    model's ``input_multiple`` as the engine pads it (S4Fusion ``paper`` runs 480×640 as 480×648).

    ``guided``: a guided model (TeSG) with guidance (a mask and as many text tokens as its
    stored fallback text); otherwise its fallback path runs.
    """
    multiple = int(getattr(model, "input_multiple", 1))
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    rgb = torch.zeros(1, 3, height, width, device=device)
    thermal = torch.zeros(1, 1, height, width, device=device)
    kwargs = {}
    if guided:
        from ivf_perception.guidance import Guidance

        tokens = model.fallback_text
        assert isinstance(tokens, torch.Tensor), "a guided model stores its fallback text tokens"
        kwargs["guidance"] = Guidance(mask=torch.ones(1, 1, height, width, device=device),
                                      text_tokens=torch.zeros(1, *tokens.shape, device=device))
    was_training = model.training
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(rgb, thermal, **kwargs)
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def measure_latency(engine: Engine, height: int, width: int, repeats: int = 5, warmup: int = 1) -> LatencyStats:
    """End-to-end engine latency on a random uint8 pair of the given size."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (height, width), dtype=np.uint8)
    for _ in range(warmup):
        engine.infer(rgb, thermal)
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    totals, stages = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        res = engine.infer(rgb, thermal)
        totals.append((time.perf_counter() - start) * 1e3)
        stages.append(res.timings_ms)
    peak = torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None
    stage_med = {k: float(np.median([s[k] for s in stages])) for k in stages[0]}
    return LatencyStats(float(np.median(totals)), float(np.percentile(totals, 90)), stage_med, peak)


def compare_engines(new: Engine, old: Engine, height: int, width: int, repeats: int = 5,
                    warmup: int = 1) -> dict[str, float]:
    """Latency of two engines on the same random pair, calls alternating, and their agreement.

    For before/after comparisons (e.g. fused scan kernels against the chunked scan): the two
    run interleaved in one process, so that a shared machine's load falls on both alike and
    their ratio means something even when absolute times drift.

    Returns:
        ``{"new_ms", "old_ms", "speedup", "new_fps", "labels_equal", "fused_max_abs_diff"}``:
        medians over ``repeats``, old/new, the share of pixels with the same label (1.0 when
        the engines have no segmentation head) and the largest difference of the fused images.
    """
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (height, width), dtype=np.uint8)
    engines = {"new": new, "old": old}
    results = {name: engine.infer(rgb, thermal) for name, engine in engines.items()}  # warm-up
    for _ in range(warmup - 1):
        results = {name: engine.infer(rgb, thermal) for name, engine in engines.items()}
    times: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            results[name] = engine.infer(rgb, thermal)
            times[name].append((time.perf_counter() - start) * 1e3)
    res_new, res_old = results["new"], results["old"]
    labels_equal = 1.0
    if res_new.labels is not None and res_old.labels is not None:
        labels_equal = float(np.mean(res_new.labels == res_old.labels))
    fused_diff = float(np.abs(res_new.fused.astype(np.float64) - res_old.fused.astype(np.float64)).max())
    new_ms, old_ms = float(np.median(times["new"])), float(np.median(times["old"]))
    return {"new_ms": new_ms, "old_ms": old_ms, "speedup": old_ms / new_ms, "new_fps": 1000.0 / new_ms,
            "labels_equal": labels_equal, "fused_max_abs_diff": fused_diff}
