"""CMFS's encoder branches: VMamba-T ("0230s" flavour) stems and stages, plus checkpoint mapping.

Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024. CMFS builds each modality's
branch like VMamba-T v2: a two-conv stem (3×3 stride 2 twice, LayerNorm and GELU between) to
H/4 × W/4, four stages of VSS blocks (SS2D with d_state 1, ssm_ratio 1.0, a 3×3 depth-wise conv
without bias, no z gate — VMamba's ``v05_noz`` — followed by an MLP of ratio 4), and 3×3
stride-2 conv downsampling with LayerNorm between stages.

Submodule indices mirror VMamba's channel-last ``nn.Sequential`` layouts (including its
``Permute`` entries), so an ImageNet VMamba-T checkpoint maps onto each branch by name:
``patch_embed.{0,2,5,7}``, ``layers.{i}.blocks.{j}.{norm,op,norm2,mlp}``,
``layers.{i}.downsample.{1,3}``. :func:`map_vmamba_checkpoint` does that mapping for both
branches and reports what did not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from ivf_perception.models.layers import VSSBlock
from ivf_perception.models.layers.factories import factory_kwargs

__all__ = ["Permute", "VMambaBranch", "VMambaStage", "CheckpointReport", "map_vmamba_checkpoint"]


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (keeps VMamba's Sequential indices, hence its key names)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def _stem(in_chans: int, dim: int, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Sequential:
    """VMamba's ``patch_embed_v2``: (B, C_in, H, W) -> (B, H/4, W/4, dim), channels-last."""
    dd = factory_kwargs(device, dtype)
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim // 2, **dd),
        Permute(0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim, **dd),
    )


def _downsample(dim: int, out_dim: int, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Sequential:
    """VMamba's ``downsample_v3``: (B, H, W, C) -> (B, H/2, W/2, out_dim), channels-last."""
    dd = factory_kwargs(device, dtype)
    return nn.Sequential(
        Permute(0, 3, 1, 2),
        nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, **dd),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim, **dd),
    )


class VMambaStage(nn.Module):
    """VSS blocks at one scale; ``downsample`` (identity at the last scale) feeds the next one.

    Shape:
        blocks: (B, H, W, C) -> (B, H, W, C); downsample: -> (B, H/2, W/2, C_next)
    """

    def __init__(self, dim: int, depth: int, out_dim: int | None, drop_paths: Sequence[float], d_state: int,
                 ssm_ratio: float, mlp_ratio: float, scan_backend: str,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.blocks = nn.Sequential(*(
            VSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio, drop_path=drop_paths[i],
                     scan_backend=scan_backend, ssm_kwargs={"conv_bias": False, "gated": False}, **dd)
            for i in range(depth)
        ))
        self.downsample = _downsample(dim, out_dim, **dd) if out_dim else nn.Identity()


class VMambaBranch(nn.Module):
    """One modality's encoder: stem and stages. CMFS interleaves its own modules between stages,
    so the branch exposes its parts instead of a monolithic forward.

    Args:
        in_chans: input channels (3 for RGB; 1 or 3 for thermal).
        dims: channels per stage.
        depths: VSS blocks per stage.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        d_state: SSM state size.
        ssm_ratio: SS2D inner width ratio.
        mlp_ratio: MLP width ratio of the VSS blocks.
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        patch_embed: (B, in_chans, H, W) -> (B, H/4, W/4, dims[0])
    """

    def __init__(self, in_chans: int, dims: Sequence[int], depths: Sequence[int], drop_path_rate: float,
                 d_state: int, ssm_ratio: float, mlp_ratio: float, scan_backend: str,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = _stem(in_chans, dims[0], **dd)
        self.layers = nn.ModuleList(
            VMambaStage(dims[i], depths[i], dims[i + 1] if i + 1 < len(dims) else None,
                        rates[sum(depths[:i]):sum(depths[:i + 1])], d_state, ssm_ratio, mlp_ratio, scan_backend, **dd)
            for i in range(len(dims))
        )

    def stages(self) -> list[VMambaStage]:
        """The stages in order, typed (a ``ModuleList`` hands out plain ``nn.Module``s)."""
        return [cast(VMambaStage, stage) for stage in self.layers]


@dataclass
class CheckpointReport:
    """What :func:`map_vmamba_checkpoint` did: loaded, missing and unexpected keys."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        parts = [f"{len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name}: {few(keys)}")
        return "; ".join(parts)


_IGNORED_PREFIXES = ("classifier.", "head.", "norm.")
"""ImageNet-only parts of a VMamba checkpoint (classification head and final norm)."""


def map_vmamba_checkpoint(state_dict: Mapping[str, torch.Tensor], branches: Mapping[str, VMambaBranch]
                          ) -> tuple[dict[str, torch.Tensor], CheckpointReport]:
    """Map an ImageNet VMamba-T state dict onto each encoder branch by name.

    Every ``patch_embed.*`` and ``layers.*`` tensor goes to ``<branch>.<same name>`` for each
    branch. A 1-channel stem receives the RGB stem's weight summed over its input channels,
    which equals feeding the thermal image repeated to three channels (the public code's way)
    at a third of the stem's cost. The classification head is ignored.

    Args:
        state_dict: the checkpoint's tensors (a ``{"model": ...}`` wrapper is unwrapped).
        branches: prefix (e.g. ``"encoder_rgb"``) → branch module.

    Returns:
        The tensors to load (keys prefixed) and a report of loaded / missing (in the model, not
        the checkpoint) / unexpected (in the checkpoint, unused) / shape-mismatched keys.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    report = CheckpointReport()
    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for prefix, branch in branches.items():
        own = branch.state_dict()
        for name, target in own.items():
            key = f"{prefix}.{name}"
            if name not in state_dict:
                report.missing.append(key)
                continue
            tensor = state_dict[name]
            used.add(name)
            if name == "patch_embed.0.weight" and target.shape[1] == 1 and tensor.ndim == 4 and tensor.shape[1] == 3:
                tensor = tensor.sum(dim=1, keepdim=True)
            if tuple(tensor.shape) != tuple(target.shape):
                report.mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(target.shape)}")
                continue
            mapped[key] = tensor.to(target.dtype)
            report.loaded.append(key)
    report.unexpected = sorted(k for k in state_dict if k not in used and not k.startswith(_IGNORED_PREFIXES))
    return mapped, report
