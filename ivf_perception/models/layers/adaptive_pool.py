"""Adaptive average and max pooling that export to ONNX for any (also dynamic) input size.

Why: the dynamo ONNX exporter has no lowering for ``adaptive_max_pool2d`` and lowers
``adaptive_avg_pool2d`` only when the output divides the input, a property a dynamic-size
export cannot promise. While ``torch.export`` traces, these functions compute PyTorch's
adaptive bins explicitly (bin ``i`` of ``n`` over a length ``L`` covers
``[floor(i·L/n), ceil((i+1)·L/n))``, bins may overlap), built in the graph from the input size:
the average as products with bin-averaging matrices, the maximum as a masked maximum (an
``n``-times larger temporary; the maps pooled here are small feature maps). Eagerly they are
PyTorch's own functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d"]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _bins(length: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """(n, length) membership mask of PyTorch's adaptive pooling bins."""
    i = torch.arange(n, device=like.device)[:, None]
    j = torch.arange(length, device=like.device)[None, :]
    start = (i * length) // n
    end = ((i + 1) * length + n - 1) // n
    return (j >= start) & (j < end)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)``; as matrix products while exporting."""
    if not torch.compiler.is_exporting():
        return F.adaptive_avg_pool2d(x, output_size)
    oh, ow = _pair(output_size)
    rows = _bins(x.shape[-2], oh, x).to(x.dtype)
    cols = _bins(x.shape[-1], ow, x).to(x.dtype)
    rows = rows / rows.sum(-1, keepdim=True)
    cols = cols / cols.sum(-1, keepdim=True)
    return rows @ x @ cols.T


def adaptive_max_pool2d(x: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d(x, output_size)`` (values only); a masked maximum while exporting."""
    if not torch.compiler.is_exporting():
        return F.adaptive_max_pool2d(x, output_size)
    oh, ow = _pair(output_size)
    lowest = torch.finfo(x.dtype).min
    rows = _bins(x.shape[-2], oh, x)  # (oh, H)
    cols = _bins(x.shape[-1], ow, x)  # (ow, W)
    # max over H within each row bin: (B, C, oh, H, W) -> (B, C, oh, W)
    per_row = torch.where(rows[:, :, None], x.unsqueeze(-3), lowest).amax(dim=-2)
    # then over W within each column bin: (B, C, oh, ow, W) -> (B, C, oh, ow)
    return torch.where(cols, per_row.unsqueeze(-2), lowest).amax(dim=-1)
