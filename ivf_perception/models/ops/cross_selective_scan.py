"""VMamba's four-direction (cross) selective scan in one fused CPU call, read from image order.

The unfused form (:func:`~ivf_perception.models.layers.cross_scan.cross_scan`, a grouped
:func:`~ivf_perception.models.ops.selective_scan`, then
:func:`~ivf_perception.models.layers.cross_scan.cross_merge`) materialises every token four
times in the four scan orders, and again for the outputs. The fused kernel instead walks each
direction's order while reading the image-order tensors in place, and writes each direction's
outputs straight back to image positions, channels last (the layout the following LayerNorm
wants). Token-wise projections (Δ, B, C) do not depend on the order, so callers compute them
once in image order. S4Fusion's Cross SS2D interleaves M = 2 modalities per position
(``x_p, y_p`` in each direction's order); SS2D is M = 1.

Forward only and float32 on CPU: callers check :func:`~ivf_perception.models.ops.cpu_scan_usable`
first and keep the unfused path for training, export and other devices.
"""

from __future__ import annotations

import torch

from ivf_perception.checks import check_shape
from ivf_perception.models.ops._backend import has_cpu_scan

__all__ = ["cross_selective_scan"]

DIRECTIONS = 4
"""Scan orders: row-major, column-major and both reversed (as ``cross_scan``)."""


def cross_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    height: int,
    width: int,
) -> torch.Tensor:
    """Scan the four orders of an ``height × width`` token map, summing the directions.

    Equal (to float rounding) to scanning ``cross_scan``'s sequences, modalities interleaved
    per position, with a grouped selective scan (group k = direction k, channel ``k·C + c`` of
    A, D and Δ bias) and merging the outputs with ``cross_merge`` per modality.

    Args:
        u: SSM input per modality, in image order (shared by the four directions).
        delta: Δ per modality and direction, before ``delta_bias``/softplus, image order.
        A: state matrix of the K·C scan channels (direction-major).
        B: input projection per modality and direction, image order.
        C: output projection, same layout as ``B``.
        D: skip weight per scan channel.
        delta_bias: added to Δ before the softplus.
        delta_softplus: apply softplus to Δ (+ bias).
        height: token-map height H.
        width: token-map width W.

    Returns:
        Outputs summed over the four directions, channels last.

    Shape:
        u: (B, M, C, H·W); delta: (B, M, 4, C, H·W); A: (4C, N); B, C: (B, M, 4, N, H·W);
        D, delta_bias: (4C,)  ->  (B, M, H·W, C)

    Raises:
        RuntimeError: when the fused CPU kernel is not available.
    """
    if not has_cpu_scan():
        raise RuntimeError("the fused cross scan needs the CPU kernel (ivf_perception.models.ops._cpu_scan); "
                           "use cross_scan + selective_scan + cross_merge instead")
    check_shape(u, "B M C L", name="u")
    bsz, mods, chans, length = u.shape
    check_shape(delta, "B M K C L", name="delta", B=bsz, M=mods, K=DIRECTIONS, C=chans, L=length)
    check_shape(A, "D N", name="A", D=DIRECTIONS * chans)
    check_shape(B, "B M K N L", name="B", B=bsz, M=mods, K=DIRECTIONS, N=A.shape[1], L=length)
    check_shape(C, "B M K N L", name="C", B=bsz, M=mods, K=DIRECTIONS, N=A.shape[1], L=length)
    per_direction = torch.ops.ivf_perception.cross_scan_fwd(
        u, delta, A.contiguous(), B, C,
        None if D is None else D.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        delta_softplus, height, width,
    )  # (B, 4, M, L, C)
    return per_direction.sum(1)
