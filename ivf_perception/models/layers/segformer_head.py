"""SegFormer's all-MLP segmentation decoder, shared by the families that segment with it.

SegFormer: Xie et al., NeurIPS 2021. CMFS segments its fused stage features with it (plus an
SS2D token mixer after the fuse convolution, CMFS's addition); S4Fusion, a fusion-only network,
gets it as our light segmentation head on its decoder features. One module serves both, so a
fix to the decoder reaches every family.

The parameter names (``proj``, ``fuse.0``/``fuse.1``, ``classifier``) are those of the bundled
S4Fusion weights, which the engine loads strictly. CMFS checkpoints written before this module
existed used SegFormer's own names and concatenated the stages coarsest first; the CMFS
``checkpoint_filter_fn`` maps them with :func:`remap_legacy_segformer_keys`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.feature_maps import check_feature_dims, check_feature_maps, resize_to
from ivf_perception.models.layers.ss2d import SS2D

__all__ = ["SegFormerHead", "remap_legacy_segformer_keys"]


class SegFormerHead(nn.Module):
    """SegFormer-style all-MLP decoder, optionally with an SS2D token mixer (CMFS).

    Each stage is projected to ``embed_dim`` by a 1×1 convolution and upsampled to the finest
    stage; the concatenation (finest first) is fused by 1×1 conv + BN, optionally mixed by
    SS2D + LayerNorm, then ReLU, dropout and a 1×1 classifier; the logits are upsampled
    bilinearly to the requested size.

    Args:
        in_dims: channels of each stage's features, finest first.
        num_classes: K.
        embed_dim: decoder width (512 in CMFS, SegFormer's B2–B5 width 768).
        dropout: ``Dropout2d`` probability before the classifier.
        fuse_bias: bias on the fuse convolution. BN follows, so it is redundant; CMFS keeps it
            as its public code does, S4Fusion's head has none.
        ss2d_d_state: state size of an SS2D mixer after the fuse conv (CMFS's addition);
            ``None`` gives plain SegFormer.
        scan_backend: selective-scan backend of the SS2D mixer.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        feats: list of (B, in_dims[i], H_i, W_i), finest first; out_size: (H, W)
        ->  logits: (B, K, H, W)
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
        fuse_bias: bool = False,
        ss2d_d_state: int | None = None,
        scan_backend: str = "auto",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.in_dims = check_feature_dims(in_dims)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.proj = nn.ModuleList(nn.Conv2d(c, embed_dim, 1, **dd) for c in self.in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(self.in_dims) * embed_dim, embed_dim, 1, bias=fuse_bias, **dd),
            nn.BatchNorm2d(embed_dim, **dd),
        )
        self.mixer: SS2D | None = None
        self.mixer_norm: nn.LayerNorm | None = None
        if ss2d_d_state is not None:
            self.mixer = SS2D(embed_dim, d_state=ss2d_d_state, ssm_ratio=2.0, scan_backend=scan_backend, **dd)
            self.mixer_norm = nn.LayerNorm(embed_dim, **dd)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1, **dd)

    def forward(self, feats: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        check_feature_maps(feats, self.in_dims, "feats", None)
        if len(out_size) != 2 or any(int(s) < 1 for s in out_size):
            raise ValueError(f"out_size must be (H, W) with positive sizes, got {out_size!r}")
        size = feats[0].shape[-2:]
        x = self.fuse(torch.cat([resize_to(proj(f), size) for proj, f in zip(self.proj, feats)], dim=1))
        if self.mixer is not None and self.mixer_norm is not None:
            x = self.mixer_norm(self.mixer(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        logits = self.classifier(self.dropout(F.relu(x)))
        return resize_to(logits, (int(out_size[0]), int(out_size[1])))


_LEGACY_NAMES = {
    "linear_c.": "proj.", "linear_fuse.": "fuse.0.", "fuse_norm.": "fuse.1.", "linear_pred.": "classifier.",
}


def remap_legacy_segformer_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Map a head saved with SegFormer's names (``linear_c``, ``linear_fuse``, ``fuse_norm``,
    ``linear_pred``, stages concatenated coarsest first) under ``prefix`` onto
    :class:`SegFormerHead`'s names and finest-first concatenation. Other keys pass unchanged.

    The fuse convolution's input channels come in one ``embed_dim`` block per stage; reversing
    the blocks makes the finest-first concatenation compute the same sums.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        rest = key[len(prefix):]
        old = next((o for o in _LEGACY_NAMES if key.startswith(prefix) and rest.startswith(o)), None)
        if old is None:
            out[key] = value
            continue
        new_key = prefix + _LEGACY_NAMES[old] + rest[len(old):]
        if rest == "linear_fuse.weight":
            embed = value.shape[0]
            value = torch.cat(value.split(embed, dim=1)[::-1], dim=1)
        out[new_key] = value
    return out
