"""MAFS fusion decoder: densely connected invertible blocks, then 3×3 conv + tanh to the fused Y.

Why invertible blocks: an invertible transform cannot discard information, so the fused
feature's detail (from both modalities) survives to the output head; the paper stacks five of
them on 32 channels. Each block is an affine coupling (eqs. 6–7) after Glow's invertible 1×1
convolution, which mixes the channels so both halves get transformed across the stack:

    [x1, x2] = W x                         (invertible 1×1 conv, LU-parameterised)
    y1 = x1 + φ(x2)                        (eq. 6)
    y2 = x2 ⊙ exp(s(y1)) + η(y1),          s(y1) = c · (2σ(ρ(y1)) − 1)       (eq. 7)

with ``c`` the clamp that bounds the log-scale (stable ``exp``). The inverse is exact:

    x2 = (y2 − η(y1)) ⊙ exp(−s(y1)),   x1 = y1 − φ(x2),   x = W⁻¹ [x1, x2].

"Densely connected": the outputs of all blocks are concatenated and aggregated by a 1×1
convolution, so the head sees shallow and deep transforms of the feature at once. The
aggregation and the head are not invertible (they map 32 channels to one); the block chain is,
and :meth:`InvertibleFusionDecoder.inverse` inverts it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs

__all__ = [
    "INN_AGGREGATIONS",
    "INN_SUBNETS",
    "InvertibleConv1x1",
    "CouplingSubnet",
    "HalfInstanceNormSubnet",
    "InvertibleBlock",
    "InvertibleFusionDecoder",
]

INN_SUBNETS = ("hin", "plain")
"""The coupling subnets: the public code's half-instance-norm blocks or our plain conv stack."""

INN_AGGREGATIONS = ("public", "all")
"""Which tensors the dense aggregation concatenates (see :class:`InvertibleFusionDecoder`)."""


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1×1 convolution, ``W = P L (U + diag(sign(s) · exp(log|s|)))``.

    The LU parameterisation keeps ``W`` invertible during training (the diagonal never reaches
    zero) and makes its inverse cheap and exact. ``W`` starts as a random rotation; the
    permutation ``P`` and the signs are fixed buffers (saved with the weights).

    Args:
        channels: channels C.
        device, dtype: where to create parameters.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W), for ``forward`` and ``inverse``.
    """

    perm: torch.Tensor
    sign_s: torch.Tensor

    def __init__(self, channels: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype or torch.get_default_dtype())
        # Factorise in float64 on the CPU (LU is unavailable for low-precision/meta tensors), then move.
        rotation = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", perm.to(**dd))
        self.register_buffer("sign_s", torch.sign(diag).to(**dd))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(**dd))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(**dd))
        self.log_s = nn.Parameter(torch.log(diag.abs()).to(**dd))

    def weight(self) -> torch.Tensor:
        """The C×C matrix ``W`` (masks keep the triangular structure whatever the optimiser does)."""
        eye = torch.eye(self.log_s.numel(), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight()[:, :, None, None])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class CouplingSubnet(nn.Sequential):
    """One of φ, ρ, η: conv3×3 → LeakyReLU → conv3×3 → LeakyReLU → conv3×3.

    Any function works in a coupling (it is never inverted); the last convolution starts at a
    tenth of its default scale so every block starts close to the identity.

    Shape:
        x: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, hidden: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        dd = factory_kwargs(device, dtype)
        first = nn.Conv2d(in_chs, hidden, 3, padding=1, **dd)
        middle = nn.Conv2d(hidden, hidden, 3, padding=1, **dd)
        last = nn.Conv2d(hidden, out_chs, 3, padding=1, **dd)
        super().__init__(first, nn.LeakyReLU(0.2), middle, nn.LeakyReLU(0.2), last)
        with torch.no_grad():
            last.weight.mul_(0.1)
            assert last.bias is not None  # built with bias=True; narrows the stubs' Optional
            last.bias.zero_()


class _HalfInstanceNormUnit(nn.Module):
    """conv3×3 → instance norm on the first half of the channels → LReLU(0.1) → conv3×3 →
    LReLU(0.1), plus a 1×1 identity projection (HINet's half-instance-norm block).

    Shape:
        x: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.identity = nn.Conv2d(in_chs, out_chs, 1, **dd)
        self.conv_1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, **dd)
        self.conv_2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, **dd)
        self.normed = out_chs // 2
        self.norm = nn.InstanceNorm2d(self.normed, affine=True, **dd) if self.normed else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_1(x)
        if self.norm is not None:
            head, tail = out.split((self.normed, out.shape[1] - self.normed), dim=1)
            out = torch.cat((self.norm(head), tail), dim=1)
        out = F.leaky_relu(self.conv_2(F.leaky_relu(out, 0.1)), 0.1)
        return out + self.identity(x)


class HalfInstanceNormSubnet(nn.Module):
    """One of φ, ρ, η as the public code builds them (its ``DenseBlock``): two
    half-instance-norm units (in → hidden → out), each followed by LeakyReLU(0.2).

    Why instance norm: the paper's subnets are "CNNs and instance norm"; normalising half the
    channels per image keeps the coupling's scale stable across scenes of very different
    brightness, while the other half keeps the absolute intensity the fused image needs.

    Shape:
        x: (B, in_chs, H, W)  ->  (B, out_chs, H, W)
    """

    def __init__(self, in_chs: int, out_chs: int, hidden: int, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.unit_1 = _HalfInstanceNormUnit(in_chs, hidden, **dd)
        self.unit_2 = _HalfInstanceNormUnit(hidden, out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.unit_2(F.leaky_relu(self.unit_1(x), 0.2)), 0.2)


class InvertibleBlock(nn.Module):
    """Invertible 1×1 conv + affine coupling (eqs. 6–7), see the module docstring.

    Args:
        channels: channels C.
        split: channels of the first half x1 (the rest is x2).
        hidden: width of the subnets φ, ρ, η.
        clamp: bound of the log-scale s.
        subnet: ``"hin"`` (:class:`HalfInstanceNormSubnet`) or ``"plain"`` (:class:`CouplingSubnet`).
        device, dtype: where to create parameters.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W), for ``forward`` and ``inverse``.
    """

    def __init__(self, channels: int, split: int, hidden: int, clamp: float = 0.8, subnet: str = "plain",
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 0 < split < channels:
            raise ValueError(f"split must be in (0, {channels}), got {split}")
        if subnet not in INN_SUBNETS:
            raise ValueError(f"Unknown coupling subnet {subnet!r}; expected one of {list(INN_SUBNETS)}")
        dd = factory_kwargs(device, dtype)
        self.splits = (split, channels - split)
        self.clamp = clamp
        self.mix = InvertibleConv1x1(channels, **dd)
        make = HalfInstanceNormSubnet if subnet == "hin" else CouplingSubnet
        self.phi = make(self.splits[1], self.splits[0], hidden, **dd)
        self.rho = make(self.splits[0], self.splits[1], hidden, **dd)
        self.eta = make(self.splits[0], self.splits[1], hidden, **dd)

    def _log_scale(self, y1: torch.Tensor) -> torch.Tensor:
        return self.clamp * (2 * torch.sigmoid(self.rho(y1)) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.mix(x).split(self.splits, dim=1)
        y1 = x1 + self.phi(x2)
        y2 = x2 * torch.exp(self._log_scale(y1)) + self.eta(y1)
        return torch.cat((y1, y2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.split(self.splits, dim=1)
        x2 = (y2 - self.eta(y1)) * torch.exp(-self._log_scale(y1))
        x1 = y1 - self.phi(x2)
        return self.mix.inverse(torch.cat((x1, x2), dim=1))


class InvertibleFusionDecoder(nn.Module):
    """The fusion decoder: invertible blocks, dense aggregation, 3×3 conv + tanh → fused Y in [0, 1].

    Dense aggregation (``aggregation``): ``"public"`` concatenates the decoder's input with the
    outputs of blocks 3…N (the public ``FeatureExtract``: ``N − 1`` tensors); ``"all"`` (ours
    before issue 15) the outputs of all N blocks. The paper's "concatenation + residual channel
    attention" is in neither (no RCA exists in the public code, so none is invented here).

    Args:
        channels: width C of the fused feature (32 in the paper).
        num_blocks: invertible blocks (5 in the paper).
        hidden: width of the coupling subnets; None uses C/2 (16 in the paper, the public ``gc``).
        clamp: bound of the coupling log-scale.
        subnet: ``"hin"`` or ``"plain"``, see :class:`InvertibleBlock`.
        aggregation: ``"public"`` or ``"all"`` (above).
        device, dtype: where to create parameters.

    Shape:
        forward: feature (B, C, H, W)  ->  Y (B, 1, H, W) in [0, 1]
        flow: feature (B, C, H, W)  ->  list of ``num_blocks`` (B, C, H, W), one per block
        inverse: last flow output (B, C, H, W)  ->  feature (B, C, H, W)
    """

    def __init__(self, channels: int, num_blocks: int = 5, hidden: int | None = None, clamp: float = 0.8,
                 subnet: str = "plain", aggregation: str = "all", device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if aggregation not in INN_AGGREGATIONS:
            raise ValueError(f"Unknown aggregation {aggregation!r}; expected one of {list(INN_AGGREGATIONS)}")
        dd = factory_kwargs(device, dtype)
        self.channels = channels
        self.aggregation = aggregation
        hidden = hidden or max(1, channels // 2)
        self.blocks = nn.ModuleList(
            InvertibleBlock(channels, channels // 2, hidden, clamp, subnet, **dd) for _ in range(num_blocks)
        )
        inputs = 1 + max(0, num_blocks - 2) if aggregation == "public" else num_blocks
        self.aggregate = nn.Conv2d(channels * inputs, channels, 1, **dd)
        self.head = nn.Conv2d(channels, 1, 3, padding=1, **dd)

    def flow(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every invertible block (the last one is what :meth:`inverse` takes)."""
        check_shape(x, "B C H W", name="feature", C=self.channels)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Exact inverse of the block chain: the feature whose last flow output is ``z``."""
        check_shape(z, "B C H W", name="z", C=self.channels)
        for block in reversed(self.blocks):
            z = cast(InvertibleBlock, block).inverse(z)  # nn.ModuleList is not generic: items type as Module
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.flow(x)
        dense = self.aggregate(torch.cat([x, *outs[2:]] if self.aggregation == "public" else outs, dim=1))
        return (torch.tanh(self.head(dense)) + 1) / 2
