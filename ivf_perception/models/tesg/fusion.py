"""TeSG's two fusion modules: MGCA (eqs. 4–6) and TDAF (eqs. 7–10).

MGCA splits each modality's features by the mask and lets each modality reconstruct the other
inside the foreground (M) and the background (1 − M) separately, then sums the two halves:

    F_vi = CA(F_v^m, F_i^m) + CA(F_v^m̄, F_i^m̄)      F_iv = CA(F_i^m, F_v^m) + CA(F_i^m̄, F_v^m̄)

with four separate CA blocks [R]. Its whole-image wiring ``F_vi = CA(F_v, F_i)``, ``F_iv = CA(F_i,
F_v)`` is the paper's "w/o MGCA" ablation and our fallback without a mask; it runs the
foreground blocks [R: the region the guided wiring trains them on is the one a full-image mask
M ≡ 1 would give].

TDAF mixes the modalities under text guidance:

    F_r = TIVR(Cat(F_vi, F_iv), F_t)                         (eq. 7)
    G_v = σ(W_v * (F_v + F_vi))     G_i = σ(W_i * (F_i + F_iv))  (eq. 8, W 3×3 conv [R])
    α   = σ(Φ_SA(F_r))              Φ_SA = 1×1(2C→C) → ReLU → 1×1(C→1)   (eq. 9 [R])
    F   = α·(1 + G_v)·(F_v + F_vi) + (1 − α)·(1 + G_i)·(F_i + F_iv)        (eq. 10)

Ablations [P Table 4]: "w/o TIVR" takes α from Cat(F_vi, F_iv) directly; "w/o GAF" decodes
``F_vi + F_iv`` (our reading of "directly decode the initial fused features").
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.tesg.attention import CrossAttentionBlock, TextCrossAttention

__all__ = ["MGCA", "TDAF", "attentional_fusion"]


def attentional_fusion(alpha: torch.Tensor, gate_v: torch.Tensor, gate_i: torch.Tensor,
                       x_v: torch.Tensor, x_i: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``α·(1 + G_v)·x_v + (1 − α)·(1 + G_i)·x_i`` with ``x_v = F_v + F_vi``, ``x_i = F_i + F_iv``.

    Shape:
        alpha: (B, 1, H, W) broadcast over channels; the others (B, C, H, W)  ->  (B, C, H, W)
    """
    return alpha * (1 + gate_v) * x_v + (1 - alpha) * (1 + gate_i) * x_i


class MGCA(nn.Module):
    """Mask-Guided Cross-Attention: four CA blocks (``split``) or the foreground two only.

    Args:
        dim: channels C.
        split: build the background blocks (False for the "w/o MGCA" network, which never
            splits).

    Shape:
        forward: four (B, C, H, W) maps  ->  (F_vi, F_iv), each (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float, bias: bool, norm_type: str,
                 split: bool = True, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)

        def block() -> CrossAttentionBlock:
            return CrossAttentionBlock(dim, num_heads, ffn_expansion, bias, norm_type, **dd)

        self.split = split
        self.ca_vi_m, self.ca_iv_m = block(), block()
        self.ca_vi_mbar = block() if split else None
        self.ca_iv_mbar = block() if split else None

    def forward(self, f_v_m: torch.Tensor, f_i_m: torch.Tensor, f_v_mbar: torch.Tensor,
                f_i_mbar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 4–6 on the masked and inverse-masked features."""
        if self.ca_vi_mbar is None or self.ca_iv_mbar is None:
            raise RuntimeError("this MGCA was built without the background blocks (split=False); use whole()")
        f_vi = self.ca_vi_m(f_v_m, f_i_m) + self.ca_vi_mbar(f_v_mbar, f_i_mbar)
        f_iv = self.ca_iv_m(f_i_m, f_v_m) + self.ca_iv_mbar(f_i_mbar, f_v_mbar)
        return f_vi, f_iv

    def whole(self, f_v: torch.Tensor, f_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The "w/o MGCA" wiring on whole-image features (also the no-mask fallback)."""
        return self.ca_vi_m(f_v, f_i), self.ca_iv_m(f_i, f_v)


class TDAF(nn.Module):
    """Text-Driven Attentional Fusion with the paper's ablation switches.

    Args:
        dim: channels C of each modality.
        text_dim: d_t.
        text_heads: heads of TIVR.
        tivr: use the text cross-attention (False: "w/o TIVR").
        gaf: use gates and α (False: "w/o GAF", returns ``F_vi + F_iv``; nothing is built).

    Shape:
        f_v, f_i, f_vi, f_iv: (B, C, H, W); text: (B, L, d_t)  ->  (F (B, C, H, W), α (B, 1, H, W) or None)
    """

    def __init__(self, dim: int, text_dim: int, text_heads: int, tivr: bool = True, gaf: bool = True,
                 norm_type: str = "WithBias", device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.gaf = gaf
        self.tivr = TextCrossAttention(2 * dim, text_dim, text_heads, norm_type, **dd) if gaf and tivr else None
        self.gate_v = nn.Conv2d(dim, dim, 3, padding=1, **dd) if gaf else None
        self.gate_i = nn.Conv2d(dim, dim, 3, padding=1, **dd) if gaf else None
        self.spatial = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, **dd), nn.ReLU(),
                                     nn.Conv2d(dim, 1, 1, **dd)) if gaf else None

    def forward(self, f_v: torch.Tensor, f_i: torch.Tensor, f_vi: torch.Tensor, f_iv: torch.Tensor,
                text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.gate_v is None or self.gate_i is None or self.spatial is None:
            return f_vi + f_iv, None
        f_r = torch.cat((f_vi, f_iv), dim=1)
        if self.tivr is not None:
            f_r = self.tivr(f_r, text)
        alpha = torch.sigmoid(self.spatial(f_r))
        x_v, x_i = f_v + f_vi, f_i + f_iv
        gate_v, gate_i = torch.sigmoid(self.gate_v(x_v)), torch.sigmoid(self.gate_i(x_i))
        return attentional_fusion(alpha, gate_v, gate_i, x_v, x_i), alpha
