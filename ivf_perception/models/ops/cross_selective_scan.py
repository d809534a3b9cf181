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
    x_dbl: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    height: int,
    width: int,
) -> torch.Tensor:
    """Scan the four orders of an ``height × width`` token map, summing the directions.

    Equal (to float rounding) to scanning ``cross_scan``'s sequences, modalities interleaved
    per position, with a grouped selective scan (group k = direction k, channel ``k·C + c`` of
    A, D and Δ bias; Δ = ``dt_projs_weight[k] @ x_dbl[:, :, k, :R]``, B and C the next N rows
    each) and merging the outputs with ``cross_merge`` per modality. Δ's up-projection runs
    inside the kernel, so the (B, M, 4, C, L) Δ tensor is never stored.

    Args:
        u: SSM input per modality, in image order (shared by the four directions); any strides
            (channels-contiguous is fastest).
        x_dbl: per modality and direction, each token's projection ``[Δ low-rank part; B; C]``
            in image order (:func:`~ivf_perception.models.layers.ssm_params.project_image_tokens`).
        dt_projs_weight: Δ's up-projection per direction.
        A: state matrix of the 4·C scan channels (direction-major).
        D: skip weight per scan channel.
        delta_bias: added to Δ before the softplus.
        delta_softplus: apply softplus to Δ (+ bias).
        height: token-map height H.
        width: token-map width W.

    Returns:
        Outputs summed over the four directions, channels last.

    Shape:
        u: (B, M, C, H·W); x_dbl: (B, M, 4, R + 2N, H·W); dt_projs_weight: (4, C, R);
        A: (4C, N); D, delta_bias: (4C,)  ->  (B, M, H·W, C)

    Raises:
        RuntimeError: when the fused CPU kernel is not available.
    """
    if not has_cpu_scan():
        raise RuntimeError("the fused cross scan needs the CPU kernel (ivf_perception.models.ops._cpu_scan); "
                           "use cross_scan + selective_scan + cross_merge instead")
    check_shape(u, "B M C L", name="u")
    bsz, mods, chans, length = u.shape
    check_shape(dt_projs_weight, "K C R", name="dt_projs_weight", K=DIRECTIONS, C=chans)
    check_shape(A, "D N", name="A", D=DIRECTIONS * chans)
    rows = dt_projs_weight.shape[2] + 2 * A.shape[1]
    check_shape(x_dbl, "B M K R L", name="x_dbl", B=bsz, M=mods, K=DIRECTIONS, R=rows, L=length)
    per_direction = torch.ops.ivf_perception.cross_scan_fwd(
        u, x_dbl, dt_projs_weight.contiguous(), A.contiguous(),
        None if D is None else D.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        delta_softplus, height, width,
    )  # (B, 4, M, L, C)
    return per_direction.sum(1)
