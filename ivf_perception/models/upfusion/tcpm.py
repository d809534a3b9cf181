"""TCPM, the Text-Guided Channel Perturbation Module (released ``MULTI_shuffle_high_text``).

For the two modality features F^A, F^B (C channels each) at one level:

    X     = cat(F^A, F^B)                                   2C channels
    idx   = topk(σ(W2 ReLU(W1 GAP(X))), C)                  ``se_fc``, no bias
    Y     = Conv1×1_{C→2C}(gather(X, idx))                  ``expand_conv``
    π     = topk(Linear(ReLU(Linear(t))), 2C).indices       ``text_fc`` on the CLIP prompt t
    Q_in  = P(Y[:, π]),  KV_in = P(X)                       one ``conv_out`` P for both
    a     = TopM-XAttn(LN1(Q_in), LN2(KV_in))
    out   = a + GDFN(LN3(a))                                no residual from Q_in or X

``se_fc`` and ``text_fc`` act only through top-k indices, so they never train; with one fixed
prompt π is a constant permutation per module. It is computed once (in fp32) when the text
embedding is set and stored as the ``text_permutation`` buffer, so inference needs neither CLIP
nor a recomputation that could flip near-ties in another precision (spec §1.4, §1.11).
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.restormer import (
    GDFN,
    ChannelCrossAttentionBase,
    ChannelLayerNorm,
    channel_attention_logits,
)
from ivf_perception.models.upfusion.selection import fp32_scores, gather_channels, top_channels, top_entries

__all__ = ["TCPM", "TopMCrossAttention", "TEXT_DIM"]

TEXT_DIM = 512
"""Width of the CLIP ViT-B/32 text embedding."""


class TopMCrossAttention(ChannelCrossAttentionBase):
    """Restormer channel cross-attention keeping the top ``⌊ratio·c⌋`` logits of every row.

    q from ``x_q``, k and v from ``x_kv`` (1×1 + depthwise 3×3, no bias: the shared
    :class:`~ivf_perception.models.layers.restormer.ChannelCrossAttentionBase`); per head of c
    channels, q and k are L2-normalised over pixels and ``A = q kᵀ · τ``; entries outside a
    row's top m become −∞ before the softmax; the result is scaled by ``scale`` (released
    ``attn4``, init 0.2) and projected. The logits and their top-m are computed in fp32.

    Shape:
        x_q, x_kv: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, num_heads: int, topm_ratio: float = 0.9, bias: bool = False,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, num_heads, bias, device=device, dtype=dtype)
        self.keep = int(dim // num_heads * topm_ratio)
        if self.keep < 1:
            raise ValueError(f"TopMCrossAttention: {dim // num_heads} channels per head keep no entry "
                             f"at ratio {topm_ratio}")
        self.scale = nn.Parameter(torch.tensor([0.2], **factory_kwargs(device, dtype)))

    def topm_mask(self, attn: torch.Tensor) -> torch.Tensor:
        """True where an entry is among the top m of its row.

        Out-of-place scatter with an index-shaped source: the in-place bool ``scatter_`` of the
        released code does not export to ONNX (spec §1.4).
        """
        idx = top_entries(attn, self.keep, ordered=False)
        ones = torch.ones(idx.shape, dtype=attn.dtype, device=attn.device)
        return torch.zeros_like(attn).scatter(-1, idx, ones) > 0.5

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        h, w = x_q.shape[-2:]
        q, k, v = self.heads(x_q, x_kv)
        with fp32_scores(q):
            attn = channel_attention_logits(q.float(), k.float(), self.temperature.float())
            attn = attn.masked_fill(~self.topm_mask(attn), float("-inf")).softmax(dim=-1)
        return self.merge((attn.to(v.dtype) @ v) * self.scale, h, w)


class TCPM(nn.Module):
    """One text-guided channel perturbation (see the module docstring).

    Args:
        dim: C, the channels of each modality feature.
        num_heads: heads of the top-m cross-attention.
        ffn_expansion: GDFN expansion.
        bias: bias of the attention and GDFN convolutions (the 1×1 ``expand_conv``/``conv_out``
            always have one, as released).
        norm_type: Restormer LayerNorm type.
        keep_ratio: fraction of the 2C concatenated channels the SE scores keep (0.5).
        topm_ratio: fraction of each attention row kept (0.9).
        text_dim: width of the text embedding.

    Shape:
        f_a, f_b: (B, C, H, W)  ->  (B, C, H, W)
    """

    text_permutation: torch.Tensor

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float = 2.66, bias: bool = False,
                 norm_type: str = "WithBias", keep_ratio: float = 0.5, topm_ratio: float = 0.9,
                 text_dim: int = TEXT_DIM, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        both = 2 * dim
        self.keep = int(both * keep_ratio)
        if not 1 <= self.keep <= both or both // 8 < 1:
            raise ValueError(f"TCPM: keep_ratio {keep_ratio} does not fit {both} channels")
        self.text_fc = nn.Sequential(nn.Linear(text_dim, text_dim, **dd), nn.ReLU(), nn.Linear(text_dim, both, **dd))
        self.se_fc = nn.Sequential(nn.Linear(both, both // 8, bias=False, **dd), nn.ReLU(),
                                   nn.Linear(both // 8, both, bias=False, **dd), nn.Sigmoid())
        self.expand_conv = nn.Conv2d(self.keep, both, 1, **dd)
        self.conv_out = nn.Conv2d(both, dim, 1, **dd)
        self.norm1 = ChannelLayerNorm(dim, norm_type, **dd)
        self.norm2 = ChannelLayerNorm(dim, norm_type, **dd)
        self.norm3 = ChannelLayerNorm(dim, norm_type, **dd)
        self.attn = TopMCrossAttention(dim, num_heads, topm_ratio, bias=False, **dd)
        self.ffn = GDFN(dim, ffn_expansion, bias, **dd)
        self.register_buffer("text_permutation", torch.arange(both, device=dd["device"]))

    def text_scores(self, text: torch.Tensor) -> torch.Tensor:
        """u = text_fc(t) in fp32 (the scores π sorts).

        Shape:
            text: (512,)  ->  (2C,)
        """
        with fp32_scores(text):
            return self.text_fc(text.float()[None])[0]

    @torch.no_grad()
    def set_text(self, text: torch.Tensor) -> None:
        """Recompute and store π from the text embedding (torch.topk order, as released)."""
        u = self.text_scores(text)
        self.text_permutation.copy_(torch.topk(u, u.numel()).indices)

    def se_scores(self, x: torch.Tensor) -> torch.Tensor:
        """σ(se_fc(GAP(X))) in fp32, (B, 2C)."""
        with fp32_scores(x):
            return self.se_fc(x.float().mean(dim=(2, 3)))

    def select(self, f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
        """The channels of ``cat(f_a, f_b)`` the SE scores keep, highest first, (B, C) int64."""
        return top_channels(self.se_scores(torch.cat((f_a, f_b), dim=1)), self.keep)

    def forward(self, f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
        return self.perturb(f_a, f_b, self.select(f_a, f_b))

    def perturb(self, f_a: torch.Tensor, f_b: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The module's output for given SE selections (:meth:`select`)."""
        x = torch.cat((f_a, f_b), dim=1)
        y = self.expand_conv(gather_channels(x, indices))
        q_in = self.conv_out(y.index_select(1, self.text_permutation))
        kv_in = self.conv_out(x)
        a = self.attn(self.norm1(q_in), self.norm2(kv_in))
        return a + self.ffn(self.norm3(a))
