"""Time one ONNX export of a registered variant (random weights), as the README's export table
does: ``export_onnx`` including its ONNX Runtime check, 1 torch thread, CPU and wall seconds.

CPU seconds are the number to compare on a shared machine (wall time grows with the load).

    python scripts/time_onnx_export.py s4fusion paper 480 640 [--out DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from ivf_perception.export import export_onnx
from ivf_perception.models import build_model


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("preset")
    parser.add_argument("height", type=int)
    parser.add_argument("width", type=int)
    parser.add_argument("--out", type=Path, default=None, help="folder for the .onnx file (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(args.variant, preset=args.preset, num_classes=9)
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.out or Path(tmp)) / f"{args.variant}-{args.preset}-{args.height}x{args.width}.onnx"
        wall, cpu = time.perf_counter(), _cpu_seconds()
        check = export_onnx(model, out, height=args.height, width=args.width)
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in check.max_abs_diff.items())
    print(f"{args.variant} {args.preset} {args.height}x{args.width}: {cpu:.1f} s CPU ({wall:.1f} s wall); "
          f"max |onnxruntime - torch|: {diffs}")


if __name__ == "__main__":
    main()
