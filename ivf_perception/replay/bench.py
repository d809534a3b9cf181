"""Replay overhead: replay throughput against the bare engine on the same frames, in one run.

Why: replay must measure the model, not the bag plumbing. The goal is that bag I/O and decoding
(reading, deserialising, pairing, Image→array, and writing the output bag) cost at most 10 % of
the engine's time. Both numbers come from one process on the same frames, in this order:

1. read and decode up to N pairs into memory, warm the engine up on one of them;
2. bare engine: ``Engine.infer`` on each in-memory pair (no I/O);
3. replay of the same bag and frames through :func:`~ivf_perception.replay.runner.run_replay`
   with fusion metrics off (scoring is evaluation, not I/O), timing every stage.

Reported per bag: ms/frame of the bare engine and of replay, their throughput ratio, and the
overhead ratio (read + decode + write) / (engine time inside replay).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ivf_perception.engine import Engine
from ivf_perception.io.bag_decode import decode_pair
from ivf_perception.io.bag_inputs import open_bag_inputs
from ivf_perception.io.bag_pairing import FrameStream
from ivf_perception.scenes import SceneConfig, write_scene_bag

from .params import NodeParams
from .runner import ReplayOptions, run_replay

__all__ = ["bench_replay", "generate_bench_bags", "format_bench_table", "OVERHEAD_GOAL"]

OVERHEAD_GOAL = 0.10
_ENGINE_STAGES = ("preprocess", "inference", "postprocess")
_IO_STAGES = ("read", "decode", "write")


def generate_bench_bags(folder: Path, sizes: Sequence[tuple[int, int]], frames: int) -> list[Path]:
    """Generated scene bags (MCAP, mono8 thermal) of each ``(height, width)`` in ``folder``."""
    return [write_scene_bag(folder / f"bench_{h}x{w}", frames, SceneConfig(height=h, width=w, seed=7), overwrite=True)
            for h, w in sizes]


def bench_replay(bag: Path, engine: Engine, work_dir: Path, *, frames: int = 20,
                 params: NodeParams | None = None) -> dict[str, Any]:
    """Measure one bag (see the module docstring); ``work_dir`` receives the replay's outputs."""
    params = params or NodeParams()
    reader, topics = open_bag_inputs(bag, "kilted", None, None, None, detect_label=False)
    try:
        decoded = []
        for pair in FrameStream(reader, topics, params.config):
            decoded.append(decode_pair(pair))
            if len(decoded) >= frames:
                break
    finally:
        reader.close()
    if not decoded:
        raise ValueError(f"bag {bag} yielded no pairs to benchmark")
    engine.infer(decoded[0].rgb, decoded[0].thermal)  # warm-up: allocations, autotuning
    start = time.perf_counter()
    for frame in decoded:
        engine.infer(frame.rgb, frame.thermal)
    bare_ms = (time.perf_counter() - start) * 1e3 / len(decoded)

    result = run_replay(ReplayOptions(bag=bag, out=work_dir, params=params, max_frames=len(decoded),
                                      fusion_metrics=False, thumbnails=0, progress=False, overwrite=True), engine)
    per_frame = result.summary["per_frame"]
    n = len(per_frame)
    engine_ms = sum(f["timings_ms"].get(s, 0.0) for f in per_frame for s in _ENGINE_STAGES) / n
    io = {s: sum(f["timings_ms"].get(s, 0.0) for f in per_frame) / n for s in _IO_STAGES}
    overlay_ms = sum(f["timings_ms"].get("overlay", 0.0) for f in per_frame) / n
    replay_ms = result.summary["throughput"]["wall_s"] * 1e3 / n
    h, w = decoded[0].rgb.shape[:2]
    return {
        "bag": str(bag), "size": f"{w}x{h}", "frames": n, "engine": result.summary["configuration"]["engine"],
        "bare_engine_ms": bare_ms, "replay_ms": replay_ms, "engine_in_replay_ms": engine_ms,
        "io_ms": io, "io_total_ms": sum(io.values()), "overlay_ms": overlay_ms,
        "throughput_ratio": bare_ms / replay_ms if replay_ms > 0 else 0.0,
        "overhead_ratio": sum(io.values()) / engine_ms if engine_ms > 0 else float("inf"),
        "goal": OVERHEAD_GOAL,
    }


def format_bench_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`bench_replay` results."""
    head = (f"{'bag':<22}{'size':>9}{'frames':>7}{'bare ms':>9}{'replay ms':>10}{'fps ratio':>10}"
            f"{'read':>7}{'decode':>7}{'write':>7}{'overlay':>8}{'engine':>8}{'overhead':>9}  goal<=10%")
    lines = [head, "-" * len(head)]
    for r in rows:
        io = r["io_ms"]
        ok = "yes" if r["overhead_ratio"] <= r["goal"] else "no"
        lines.append(f"{Path(r['bag']).name[:21]:<22}{r['size']:>9}{r['frames']:>7}{r['bare_engine_ms']:>9.1f}"
                     f"{r['replay_ms']:>10.1f}{r['throughput_ratio']:>10.3f}{io['read']:>7.2f}{io['decode']:>7.2f}"
                     f"{io['write']:>7.2f}{r['overlay_ms']:>8.2f}{r['engine_in_replay_ms']:>8.1f}"
                     f"{r['overhead_ratio'] * 100:>8.1f}%  {ok}")
    lines.append("ms are per frame; fps ratio = replay throughput / bare engine throughput; overhead = "
                 "(read + decode + write) / engine time inside replay; overlay (post-processing the bare "
                 "engine does not do) is shown apart")
    return "\n".join(lines)
