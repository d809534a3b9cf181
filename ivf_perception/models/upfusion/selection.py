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

__all__ = ["fp32_scores", "gather_channels", "top_channels"]


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
    return torch.topk(scores, k, dim=1).indices


def gather_channels(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x[b, indices[b]]`` per sample, in the order of ``indices`` (ONNX GatherElements).

    Shape:
        x: (B, C, H, W), indices: (B, k)  ->  (B, k, H, W)
    """
    b, _, h, w = x.shape
    return x.gather(1, indices[:, :, None, None].expand(b, indices.shape[1], h, w))
