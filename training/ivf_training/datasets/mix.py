"""Mixing datasets (with repeats) and describing a mix for the run's ``data.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from ivf_perception.io.errors import DatasetError

from .common import Sample
from .sampling import AugmentedDataset

__all__ = ["build_mix", "describe_dataset"]


class _Repeat(Dataset):
    """A dataset repeated ``times`` (so small real sets weigh more in the mix)."""

    def __init__(self, base: Dataset, times: int) -> None:
        self.base = base
        self.times = times

    def __len__(self) -> int:
        return len(self.base) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        return self.base[index % len(self.base)]  # type: ignore[arg-type]


def describe_dataset(dataset: Dataset) -> Any:
    """A JSON-able description of a dataset or mix (kinds, roots, counts, repeats)."""
    if isinstance(dataset, ConcatDataset):
        return {"kind": "mix", "samples": len(dataset), "parts": [describe_dataset(d) for d in dataset.datasets]}
    if isinstance(dataset, _Repeat):
        return {**describe_dataset(dataset.base), "repeat": dataset.times}
    if isinstance(dataset, AugmentedDataset):
        return describe_dataset(dataset.base)
    describe = getattr(dataset, "describe", None)
    return describe() if describe is not None else {"kind": type(dataset).__name__, "samples": len(dataset)}  # type: ignore[arg-type]


def build_mix(parts: Sequence[tuple[Dataset, int]]) -> Dataset:
    """Concatenate datasets, each repeated the given number of times."""
    if not parts:
        raise DatasetError("no datasets to mix")
    wrapped = [d if times == 1 else _Repeat(d, times) for d, times in parts]
    return wrapped[0] if len(wrapped) == 1 else ConcatDataset(wrapped)
