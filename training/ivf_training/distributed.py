"""Data-parallel training under ``torchrun``: process group, data sharding, metric reduction.

::

    torchrun --standalone --nproc-per-node 4 -m ivf_training.cli run RECIPE.yaml [key=value ...]

Every rank runs the same :class:`~ivf_training.trainer.Trainer`; rank 0 alone writes the run
directory (config, log, checkpoints, TensorBoard). NCCL joins the ranks on GPUs (one GPU per
rank, ``cuda:LOCAL_RANK``), gloo on the CPU.

Why the data order survives a kill: ``batch_size`` is the *global* batch. The global batch of
every optimiser step comes from :class:`~ivf_training.datasets.ResumableBatchSampler`, a function
of (seed, epoch) only, and rank ``r`` always takes slice ``r`` of it
(:class:`ShardedBatchSampler`). The sequence of global batches therefore does not depend on the
number of ranks, and a run resumed at step N, with any world size, continues with the batches an
uninterrupted run would have seen.

Gradient accumulation (``accum_steps``) cuts each rank's share into micro-batches
(:func:`split_batch`); only the last one's backward all-reduces (:func:`grad_sync`).

Why DDP matches one process with the same global batch: each rank's loss is a mean over its
``batch_size / world_size`` samples and DDP averages the gradients, which equals the gradient of
the mean over the global batch whenever the loss is a per-sample mean. Two exceptions, both
documented in ``training/README.md``: BatchNorm computes its batch statistics per rank (use
``sync_batchnorm: true`` on GPUs), and a loss normalised by a data-dependent count (cross-entropy
over non-ignored pixels, CMFS's expert-balance term) weights the ranks' samples slightly
differently when the counts differ.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler, Subset

from ivf_training.config import ConfigError
from ivf_training.datasets import ResumableBatchSampler

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "ShardedBatchSampler",
    "shard_dataset",
    "wrap_model",
    "convert_sync_batchnorm",
    "grad_sync",
    "split_batch",
    "gather_objects",
    "broadcast_object",
    "mean_across_ranks",
    "barrier",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job; the default is a single process.

    Attributes:
        rank: global rank (0 writes the run directory).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process: gradients and metrics must be reduced."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, checkpoints and exports."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DistContext:
        """The context of the initialised process group, or a single process without one."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def place(self, device: torch.device) -> torch.device:
        """This rank's device: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank).

        Raises:
            ConfigError: an explicit ``cuda:N`` under torchrun would put every rank on one GPU.
        """
        if not self.enabled or device.type != "cuda":
            return device
        if device.index is not None:
            raise ConfigError(
                f"device '{device}' names one GPU, but torchrun started {self.world_size} ranks; "
                "use device=auto or device=cuda so that each rank takes cuda:LOCAL_RANK"
            )
        return torch.device("cuda", self.local_rank)


def init_distributed(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Without torchrun (``WORLD_SIZE`` unset or 1) nothing happens, so every entry point can call
    this unconditionally.

    Args:
        device: the configured ``device`` (``auto``, ``cpu``, ``cuda``): CUDA ranks use NCCL
            and pin ``cuda:LOCAL_RANK``; CPU ranks use gloo.

    Raises:
        ConfigError: more ranks on this machine than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return DistContext.current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); start at most "
                f"{torch.cuda.device_count()} processes per node (torchrun --nproc-per-node) or use device=cpu"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext.current()


def shutdown_distributed() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch of a :class:`ResumableBatchSampler`.

    ``set_epoch`` is called on the global sampler; this view only slices what it yields, so all
    ranks step through the same global batches in lock-step.

    Raises:
        ConfigError: the global batch does not split evenly over the ranks.
    """

    def __init__(self, base: ResumableBatchSampler, rank: int, world_size: int) -> None:
        if base.batch_size % world_size:
            raise ConfigError(
                f"batch_size {base.batch_size} (the global batch) is not divisible by the {world_size} ranks; "
                f"use a multiple of {world_size}"
            )
        self.base = base
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.base.batch_size // self.world_size
        for batch in self.base:
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def shard_dataset(dataset: Dataset, ctx: DistContext) -> Dataset:
    """Every ``world_size``-th sample from ``rank`` on: the ranks cover the set exactly once.

    No sample is repeated to even out the shards (as ``DistributedSampler`` would), so the
    reduced metrics are those of the whole set.
    """
    if not ctx.enabled:
        return dataset
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, *,
               find_unused_parameters: bool = False) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel, or ``model`` itself for one process.

    Only the training forward goes through the wrapper; checkpoints, validation and export use
    the bare module, so parameter names never gain a ``module.`` prefix.
    """
    if not ctx.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def convert_sync_batchnorm(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` with BatchNorm layers that share batch statistics across the ranks.

    Without it each rank normalises with the statistics of its own ``batch_size / world_size``
    samples, which for small per-GPU batches are noisy (and differ from a one-process run).

    Raises:
        ConfigError: ``sync_batchnorm`` on the CPU (PyTorch synchronises BatchNorm on GPUs only).
    """
    if not ctx.enabled:
        return model
    if device.type != "cuda":
        raise ConfigError("sync_batchnorm needs GPUs (NCCL); on the CPU set sync_batchnorm: false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def grad_sync(model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager[Any]:
    """Context of one micro-batch's backward pass under gradient accumulation.

    DDP all-reduces gradients during every backward; with accumulation only the last
    micro-batch needs it, so the others run under ``no_sync`` (the gradients still accumulate
    locally, and the last all-reduce averages their sums).
    """
    if last_micro_batch or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """``batch`` cut into ``parts`` equal micro-batches along the first dimension (tensors) or
    the list order (names), for gradient accumulation.

    Raises:
        ConfigError: the batch does not split evenly.
    """
    if parts == 1:
        return [dict(batch)]
    size = len(batch["rgb"])
    if size % parts:
        raise ConfigError(f"a batch of {size} samples does not split into accum_steps={parts} equal micro-batches")
    step = size // parts
    return [{k: v[i * step : (i + 1) * step] for k, v in batch.items()} for i in range(parts)]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every rank, in rank order (picklable Python objects; one collective)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a run name that contains a timestamp)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """The mean over ranks of each value (for per-rank means over equal-sized shards).

    Keys missing on some rank are averaged over the ranks that have them.
    """
    if not ctx.enabled:
        return dict(values)
    per_rank: Sequence[Mapping[str, float]] = gather_objects(dict(values), ctx)
    keys = list(dict.fromkeys(k for r in per_rank for k in r))
    return {k: sum(r[k] for r in per_rank if k in r) / sum(1 for r in per_rank if k in r) for k in keys}


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op for one process)."""
    if ctx.enabled:
        dist.barrier()
