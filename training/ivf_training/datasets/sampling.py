"""Augmentation and data order that depend on (seed, epoch, index) only, so runs resume exactly.

A run resumed at step N sees exactly the batches an uninterrupted run would have seen, with any
number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ivf_perception.io.errors import DatasetError
from ivf_training.augment import JointAugment

from .common import Sample

__all__ = ["AugmentedDataset", "ResumableBatchSampler"]


class AugmentedDataset(Dataset):
    """Applies :class:`~ivf_training.augment.JointAugment` with a per-sample seeded generator.

    The generator of sample ``index`` in epoch ``epoch`` is seeded from ``(seed, epoch, index)``
    through numpy's ``SeedSequence`` (well-mixed, no collisions between nearby triples), so the
    augmentation does not depend on worker processes or on the order samples are drawn in.
    Call :meth:`set_epoch` before each epoch (DataLoader workers get a fresh copy per epoch).
    """

    def __init__(self, base: Dataset, augment: JointAugment, seed: int) -> None:
        self.base = base
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return self.augment(self.base[index], generator)


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled fixed-size batches whose order is a function of (seed, epoch).

    ``set_epoch(epoch, skip_batches)`` makes the next iteration yield that epoch's batches from
    ``skip_batches`` on: a resumed run continues mid-epoch with the batches it would have seen.
    The last incomplete batch is dropped (crops are equal-sized, but BatchNorm-style layers and
    the learning-rate schedule expect full batches).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < batch_size:
            raise DatasetError(
                f"the training set has {num_samples} samples, fewer than batch_size {batch_size}; "
                "add data or lower batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}], got {skip_batches}")
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        state = np.random.SeedSequence([self.seed, self.epoch, 0x5A17]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.skip_batches, self.batches_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]
