"""Four-direction local-window scan orders of a 2-D feature map (LocalMamba's scan) and their inverse.

Huang et al., "LocalMamba: Visual State Space Model with Windowed Selective Scan", 2024, used
by CMFS's wavelet branch. A plain cross scan (:func:`cross_scan`) puts vertically adjacent
pixels ``W`` tokens apart; reading the map window by window keeps each ``window × window``
neighbourhood contiguous in the sequence, so the selective scan mixes local detail before its
state decays.

Direction 0 visits windows row by row and the tokens of each window row by row; direction 1
visits windows column by column and the tokens of each window column by column; directions 2
and 3 are 0 and 1 reversed. Windows at the right and bottom border may be partial, so every
H, W works and no pixel is dropped: the orders are permutations of all ``H*W`` tokens. (CMFS's
public ``local_scan`` crops H, W to multiples of the window, reads position-in-window before
window index, and merges with the plain cross-scan inverse, so its outputs land on the wrong
pixels; :func:`window_merge` applies the true inverse permutation.)

Pure index gathers with indices cached per (H, W, window, device), or computed in the graph for
a dynamic-size export: any device, ONNX-exportable.
"""

from __future__ import annotations

import functools

import torch

from ivf_perception.checks import ShapeError, check_shape, checks_enabled
from ivf_perception.models.layers.cross_scan import NUM_DIRECTIONS

__all__ = ["window_scan", "window_merge", "window_scan_order"]


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (the side of a square scan window), got {window!r}")


@functools.lru_cache(maxsize=64)
def _orders(H: int, W: int, window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                         torch.Tensor, torch.Tensor]:
    """(row-window order, column-window order, and their inverses) as int64 index vectors.

    Built outside inference mode even when first called inside it: a cached inference tensor
    could not be saved for backward by a later training step's ``index_select``.
    """
    with torch.inference_mode(False):
        return _build_orders(H, W, window, device)


def _orders_for(H: int, W: int, window: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`_orders`, or built in the graph when H or W is symbolic (a dynamic-size export
    traces them as ``SymInt``, which a cache cannot hash, and the graph must compute them), and
    while compiling or exporting (the tensors are the tracer's fake ones then: cached, they would
    break the next eager call)."""
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if isinstance(H, int) and isinstance(W, int) and not tracing:
        return _orders(H, W, window, device)
    return _build_orders(H, W, window, device)


def _build_orders(H: int, W: int, window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, torch.Tensor]:
    rows = torch.arange(H).view(H, 1).expand(H, W)
    cols = torch.arange(W).view(1, W).expand(H, W)
    win_rows, win_cols = -(-H // window), -(-W // window)
    row_key = (((rows // window) * win_cols + cols // window) * window + rows % window) * window + cols % window
    col_key = (((cols // window) * win_rows + rows // window) * window + cols % window) * window + rows % window
    row_order = torch.argsort(row_key.flatten())
    col_order = torch.argsort(col_key.flatten())
    return (row_order.to(device), col_order.to(device),
            torch.argsort(row_order).to(device), torch.argsort(col_order).to(device))


def window_scan_order(H: int, W: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The token order of each forward direction as indices into the row-major flattened map.

    ``window_scan(x, window)[:, k] == x.flatten(2)[..., order[k]]`` for ``k`` in 0, 1; the
    reversed directions 2 and 3 read ``order[k - 2].flip(-1)``.

    Args:
        H: feature-map height.
        W: feature-map width.
        window: side of the square scan window.
        device: device of the returned indices.

    Returns:
        int64 indices, a permutation of ``range(H*W)`` per row.

    Shape:
        ->  (2, H*W)

    Example:
        >>> window_scan_order(3, 3, 2)
        tensor([[0, 1, 3, 4, 2, 5, 6, 7, 8],
                [0, 3, 1, 4, 6, 7, 2, 5, 8]])
    """
    _check_window(window)
    if H < 1 or W < 1:
        raise ValueError(f"H and W must be >= 1, got H={H}, W={W}")
    row_order, col_order, _, _ = _orders(H, W, window, torch.device(device or "cpu"))
    return torch.stack([row_order, col_order])


def window_scan(x: torch.Tensor, window: int) -> torch.Tensor:
    """Flatten a feature map in the four local-window scan orders.

    Args:
        x: feature map.
        window: side of the square scan window; ``window == 1`` or ``window >= max(H, W)``
            gives :func:`cross_scan`'s orders.

    Returns:
        The four sequences, stacked on dimension 1.

    Shape:
        x: (B, C, H, W)  ->  (B, 4, C, H*W)

    Example:
        >>> window_scan(torch.arange(9.).view(1, 1, 3, 3), 2)[0, :2, 0]
        tensor([[0., 1., 3., 4., 2., 5., 6., 7., 8.],
                [0., 3., 1., 4., 6., 7., 2., 5., 8.]])
    """
    check_shape(x, "B C H W", name="x")
    _check_window(window)
    row_order, col_order, _, _ = _orders_for(x.shape[2], x.shape[3], window, x.device)
    flat = x.flatten(2)
    forward = torch.stack([flat.index_select(-1, row_order), flat.index_select(-1, col_order)], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def window_merge(y: torch.Tensor, H: int, W: int, window: int) -> torch.Tensor:
    """Undo each scan order of :func:`window_scan` and sum the four directions.

    ``window_merge(window_scan(x, window), H, W, window) == 4 * x.flatten(2)``.

    Args:
        y: the four sequences (outputs of a scan over ``window_scan``'s orders).
        H: feature-map height.
        W: feature-map width.
        window: side of the square scan window used by :func:`window_scan`.

    Returns:
        The sum, in row-major (image) order.

    Shape:
        y: (B, 4, C, H*W)  ->  (B, C, H*W)
    """
    check_shape(y, f"B {NUM_DIRECTIONS} C L", name="y")
    _check_window(window)
    if checks_enabled() and y.shape[-1] != H * W:
        raise ShapeError(f"y: expected L = H*W = {H}*{W} = {H * W} tokens, got shape {tuple(y.shape)}")
    _, _, row_inverse, col_inverse = _orders_for(H, W, window, y.device)
    forward = y[:, :2] + y[:, 2:].flip(-1)  # undo the reversal: (B, 2, C, L)
    return forward[:, 0].index_select(-1, row_inverse) + forward[:, 1].index_select(-1, col_inverse)
