"""Which bundled weights ``weights: default`` means on a given device.

Why a table: a CPU and a GPU want different models (a small S4Fusion runs at frame rate on two
cores; a GPU can afford a larger preset), so ``default`` names one file per device kind. The
table below is the one place that says which file is meant for which device; the engine, the
node and the commands all resolve ``default`` through :func:`resolve_default_weights`, and each
front door shows the returned reason (the node at configure, the commands on stderr).

A GPU default that is listed but not bundled (not trained yet) is not an error on CUDA: the CPU
default runs there too, and the reason says so plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["WEIGHTS_DIR", "DefaultWeights", "DefaultChoice", "DEFAULT_WEIGHTS_TABLE", "resolve_default_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Where the bundled ``.safetensors`` files and their sidecars live (package data)."""


@dataclass(frozen=True)
class DefaultWeights:
    """One row of the defaults table: a bundled file stem and the device kind it is meant for."""

    name: str
    device: str  # "cpu" or "cuda"

    def path(self, directory: Path = WEIGHTS_DIR) -> Path:
        return directory / f"{self.name}.safetensors"


@dataclass(frozen=True)
class DefaultChoice:
    """The file ``default`` resolved to and a one-line reason fit for a log."""

    path: Path
    reason: str


DEFAULT_WEIGHTS_TABLE: tuple[DefaultWeights, ...] = (
    DefaultWeights("s4fusion_tiny_default", "cpu"),
    DefaultWeights("s4fusion_gpu_default", "cuda"),
)
"""The CPU default is always bundled; the GPU default is listed for when it is trained (issue 18)."""


def _entry(table: Sequence[DefaultWeights], device: str) -> DefaultWeights:
    for row in table:
        if row.device == device:
            return row
    raise ValueError(f"the default weights table has no '{device}' entry")


def resolve_default_weights(device: str | torch.device, *, table: Sequence[DefaultWeights] = DEFAULT_WEIGHTS_TABLE,
                            directory: Path = WEIGHTS_DIR) -> DefaultChoice:
    """The bundled file for ``device`` (``cpu``, ``cuda`` or ``cuda:N``) and why it was picked.

    Only the device's kind matters; ``auto`` must be resolved by the caller first (the engine
    resolves it before loading). Existence of the CPU file is not checked here: the engine
    reports a missing bundled file with its own reinstall hint.
    """
    kind = torch.device(device).type
    cpu = _entry(table, "cpu")
    if kind != "cuda":
        return DefaultChoice(cpu.path(directory), f"weights 'default' on {kind}: using the CPU default {cpu.name}")
    gpu = _entry(table, "cuda")
    if gpu.path(directory).is_file():
        return DefaultChoice(gpu.path(directory), f"weights 'default' on cuda: using the GPU default {gpu.name}")
    return DefaultChoice(cpu.path(directory), "weights 'default' on cuda: no GPU default bundled "
                         f"({gpu.name}.safetensors); using the CPU default {cpu.name}")
