"""The hard channel selections UP-Fusion is built on, and the fp32 guard around their scores.

Both SCPM and TCPM score channels, keep the top k by ``torch.topk`` (sorted, descending) and
gather them in that order. The scores come from layers that never train (spec §1.2, §1.4), so
they are nearly tied; in fp16/bf16 the order flips and the output changes discontinuously
(§1.11). Scores are therefore always computed in fp32, also under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["fp32_scores", "gather_channels", "recorded_margins", "top_channels", "top_entries"]

_RECORDERS: list[list[float]] = []


@contextlib.contextmanager
def fp32_scores(x: torch.Tensor) -> Iterator[None]:
    """Switch autocast off for the enclosed scoring code (inputs must be cast to fp32 there).

    Enters nothing when autocast is off (or has no meaning, as on the meta device used for
    counting), so traced/exported graphs stay free of it.
    """
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        with torch.autocast(device_type=device, enabled=False):
            yield
    else:
        yield


def top_channels(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores per row, highest first (torch's order on ties).

    Shape:
        scores: (B, C)  ->  (B, k) int64
    """
    return top_entries(scores, k, ordered=True)


def top_entries(scores: torch.Tensor, k: int, ordered: bool) -> torch.Tensor:
    """Indices of the ``k`` highest scores along the last dim, highest first.

    ``ordered`` says whether the order of the kept entries matters downstream (it does for the
    channel gathers, not for a mask); it only changes which margin :func:`recorded_margins` sees.
    """
    indices = torch.topk(scores, k, dim=-1).indices
    if _RECORDERS:
        _RECORDERS[-1].append(_margin(scores.detach().float(), k, ordered))
    return indices


def _margin(scores: torch.Tensor, k: int, ordered: bool) -> float:
    """The smallest score gap that decides the selection: k-th vs (k+1)-th, and between the kept
    entries when their order matters."""
    top = scores.sort(dim=-1, descending=True).values
    gaps = [top[..., k - 1] - top[..., k]] if k < top.shape[-1] else []
    if ordered and k > 1:
        gaps.append(top[..., : k - 1] - top[..., 1:k])
    return min((float(g.min()) for g in gaps), default=float("inf"))


@contextlib.contextmanager
def recorded_margins() -> Iterator[list[float]]:
    """Collect the deciding score margin of every top-k taken inside (eager PyTorch only).

    Why: a margin below the ~1e-6 differences between backends (ONNX Runtime, fp16) lets a
    near-tie resolve differently there and changes the output discontinuously (spec §1.11);
    the ONNX export check names the smallest one when it refuses a file.
    """
    margins: list[float] = []
    _RECORDERS.append(margins)
    try:
        yield margins
    finally:
        _RECORDERS.pop()


def gather_channels(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[b, indices[b]]`` per sample, in the order of ``indices`` (ONNX GatherElements).

    Shape:
        x: (B, C, H, W), indices: (B, k)  ->  (B, k, H, W)
    """
    b, _, h, w = x.shape
    return x.gather(1, indices[:, :, None, None].expand(b, indices.shape[1], h, w))
