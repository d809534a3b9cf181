"""CMFS's multi-modal feature enhancement (MMFE): channel-embed fusion, low-rank MoE, strip convs.

Su et al., "CMFS: CLIP-Guided Modality Interaction for Mitigating Noise in Multi-Modal Image
Fusion and Segmentation", IJCAI 2025; public code ``SuGuilin/IJCAI2025-CMFS`` (``models/modules.py``
and ``models/encoder.py``), read to understand the method; this is our own implementation.

At every encoder stage the RGB and thermal features are fused once and refined twice::

    fused = ChannelEmbed(cat(rgb, thermal))              # eq. 11: BN(PConv(cat) + CE(cat))
    repeat num_blocks (2) times:
        fused, aux = ResMoEBlock(fused)                   # low-rank mixture of experts
        fused = StripConv(fused)                          # 1×11 then 11×1 depth-wise strips

The mixture of experts routes each *image* (not each pixel): a router reads the globally pooled
features and picks ``top_k`` (1) of three experts whose bottleneck ranks are 2, 4 and 8, so an
easy, clean scene can take the cheap expert and a noisy night scene the wider one. As in the
public code, an expert multiplies a low-rank projection of the features by a low-rank projection
of a "calibration" context (a coarse, pooled view of the other half of the block's channels) and
projects back; the chosen expert's output is scaled by its gate probability, so the router is
trained by the task loss although top-1 selection itself has no gradient.

Our additions and departures, with the reasons:

* A load-balancing auxiliary loss (Switch Transformer, Fedus et al. 2022; see
  :func:`load_balancing_loss`) is returned next to the features. The public code trains the
  router with the task loss alone, which lets it collapse onto one expert; the loss is returned,
  never applied, so a weight of 0 in the trainer reproduces the paper.
* Experts are evaluated densely and weighted by a gate that is zero for the unselected ones.
  The output equals sparse dispatch exactly; dense evaluation has no data-dependent shapes (it
  traces, compiles and exports) and costs little: with ranks 2/4/8 all experts together do
  ``42·C`` multiply-adds per pixel against about ``20·C²`` for the rest of the block (2 % at
  C = 96). The public evaluation path indexes experts with ``topk_experts.squeeze(0)``, which
  only works for a batch of one.
* Inside each MoE block the public code runs a Mamba (d_state 64) over the row-major token
  sequence of the expert input. Its source builds ``Mamba(bimamba_type=None)``, but the
  ``mamba_ssm`` package it ships (``utils/dis_mamba``) defaults to the bidirectional "v2" scan,
  which is what runs (135.16 M parameters in all, against 133.62 M with a causal mixer).
  ``mamba_bidirectional=True`` (the ``paper`` preset) is that mixer, our
  :class:`~ivf_perception.models.layers.bimamba.BidirectionalMamba` (Vision Mamba v2: separate causal
  conv, Δ/B/C, A and D per direction, outputs averaged; the shipped package is compiled only,
  so whether it averages or sums the directions could not be read, and the output projection
  absorbs the factor); ``False`` is the causal :class:`SequenceMamba` (our earlier reading,
  kept for the small preset and for weights saved before the switch). Both run on our
  selective scan without compiled kernels; ``mamba_d_state=None`` removes the mixer.
* Sizes are never fixed at construction: the calibration context is pooled with strided
  convolutions and upsampled back to the actual feature size.

Weights: none ship with this module; the public repository states no licence, so its
checkpoints are not redistributed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers.bimamba import BidirectionalMamba
from ivf_perception.models.layers.channel_shuffle import channel_shuffle
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.ss2d import check_scan_backend
from ivf_perception.models.layers.ssm_params import (
    dt_rank_for,
    init_a_log,
    init_dt_bias,
    init_dt_weight,
    no_weight_decay,
)
from ivf_perception.models.ops import selective_scan

__all__ = [
    "ChannelEmbed",
    "GatedFFN",
    "LayerNorm2d",
    "LowRankExpert",
    "LowRankMoE",
    "MultiModalFeatureEnhancement",
    "ResMoEBlock",
    "SequenceMamba",
    "StripConv",
    "channel_shuffle",
    "load_balancing_loss",
]


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E · Σ_i f_i · P_i`` over a batch.

    ``f_i`` is the fraction of routing slots (``B · top_k``) that went to expert ``i`` (counted,
    no gradient) and ``P_i`` the mean router probability of expert ``i`` (differentiable). The
    gradient lowers the probability of the experts that received more than their share. When
    both the assignments and the mean probabilities are uniform the loss is 1; when every image
    has the same distribution ``p`` (and so goes to ``argmax p``) it is ``E · max p``, minimal
    (1) for uniform ``p`` and ``E`` for a collapsed router. It is a pressure towards balance, not
    a strict bound: mixed assignments can score slightly below 1.

    Args:
        probs: router probabilities (rows sum to 1).
        expert_index: the experts each sample was sent to.

    Shape:
        probs: (B, E); expert_index: (B, k) integer  ->  scalar
    """
    check_shape(probs, "B E", name="probs")
    check_shape(expert_index, "B k", name="expert_index", B=probs.shape[0])
    num_experts = probs.shape[1]
    counts = F.one_hot(expert_index, num_experts).sum(dim=(0, 1)).to(probs.dtype)
    fraction = counts / expert_index.numel()
    return num_experts * (fraction * probs.mean(dim=0)).sum()


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map (ConvNeXt's ``channels_first`` norm).

    Args:
        num_channels: C.
        eps: added to the variance; 1e-6 as in the public code.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_channels, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelEmbed(nn.Module):
    """Channel-embed fusion (paper eq. 11): ``BN(PConv(x) + CE(x))``.

    ``PConv`` is a bias-free 1×1 projection (a linear mix of the two modalities' channels);
    ``CE`` adds local context before mixing: 1×1 → depth-wise 3×3 → ReLU → 1×1 → BN.

    Args:
        in_channels: channels of the concatenated input (2C at a CMFS stage).
        out_channels: fused channels (C).
        reduction: ``CE``'s hidden width is ``out_channels // reduction``.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, in_channels, H, W)  ->  (B, out_channels, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden = out_channels // reduction
        if hidden < 1:
            raise ValueError(f"out_channels // reduction must be >= 1, got {out_channels} // {reduction}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.residual = nn.Conv2d(in_channels, out_channels, 1, bias=False, **dd)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, **dd),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, **dd),
            nn.BatchNorm2d(out_channels, **dd),
        )
        self.norm = nn.BatchNorm2d(out_channels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.in_channels)
        return self.norm(self.residual(x) + self.channel_embed(x))


class GatedFFN(nn.Module):
    """Gated feed-forward: 1×1 → GELU, split, gate half by a depth-wise conv, multiply, 1×1 → GELU.

    The depth-wise gate gives the feed-forward branch a 3×3 neighbourhood, which a plain MLP lacks.

    Args:
        dim: channels C.
        mlp_ratio: hidden width ``mlp_ratio · C`` before the split (must give an even width).
        kernel_size: size of the depth-wise gate conv (odd).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, mlp_ratio: int = 2, kernel_size: int = 3, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        hidden = dim * mlp_ratio
        if hidden % 2 or kernel_size % 2 == 0:
            raise ValueError(f"GatedFFN needs an even hidden width and an odd kernel, got dim·mlp_ratio={hidden}, "
                             f"kernel_size={kernel_size}")
        half = hidden // 2
        self.fn_1 = nn.Sequential(nn.Conv2d(dim, hidden, 1, **dd), nn.GELU())
        self.gate = nn.Conv2d(half, half, kernel_size, padding=kernel_size // 2, groups=half, **dd)
        self.fn_2 = nn.Sequential(nn.Conv2d(half, dim, 1, **dd), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.fn_1(x).chunk(2, dim=1)
        return self.fn_2(x * self.gate(gate))


class SequenceMamba(nn.Module):
    """Mamba (S6) mixer over a token sequence: the public MoE block's global context path.

    in_proj → (x, z); x → causal depth-wise conv1d → SiLU → input-dependent Δ, B, C → selective
    scan with ``D`` skip and ``silu(z)`` gate → out_proj. Parameter names follow ``mamba_ssm``'s
    ``Mamba`` so its state dicts map one to one.

    Args:
        dim: channels C.
        d_state: SSM state size N (64 in CMFS's MoE blocks).
        d_conv: causal conv kernel size.
        expand: inner width ``expand · C``.
        dt_rank: rank of Δ's projection; ``"auto"`` is ``ceil(C / 16)``.
        scan_backend: selective-scan backend, see :data:`~ivf_perception.models.ops.SCAN_BACKENDS`.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, L, C)  ->  (B, L, C), any L >= 1
    """

    def __init__(self, dim: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 scan_backend: str = "auto", device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_scan_backend(scan_backend)
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.d_state = d_state
        self.d_inner = expand * dim
        self.dt_rank = dt_rank_for(dim, dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False, **dd)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner, **dd)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, **dd)
        self.A_log = no_weight_decay(nn.Parameter(torch.empty(self.d_inner, d_state, **dd)))
        self.D = no_weight_decay(nn.Parameter(torch.empty(self.d_inner, **dd)))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation of Δ, A and D (the nn layers initialise themselves)."""
        init_dt_weight(self.dt_proj.weight, self.dt_rank)
        init_dt_bias(self.dt_proj.bias)
        init_a_log(self.A_log)
        nn.init.ones_(self.D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B L C", name="x", C=self.dim)
        length = x.shape[1]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv1d(u.transpose(1, 2))[..., :length])  # causal: drop the look-ahead tail
        dt, b, c = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias
        a_log = self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32))
        y = selective_scan(
            u, delta, -torch.exp(a_log), b.transpose(1, 2), c.transpose(1, 2), self.D, z.transpose(1, 2),
            delta_bias=self.dt_proj.bias, delta_softplus=True, backend=self.scan_backend,
        )
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"scan_backend={self.scan_backend!r}")


class LowRankExpert(nn.Module):
    """A rank-``r`` expert: ``up(down_x(x) ⊙ down_ctx(context))``, all 1×1 convolutions.

    The product lets the context modulate which of the ``r`` directions pass, at a cost of
    ``3·C·r`` weights.

    Args:
        dim: channels C.
        rank: bottleneck width r.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x, context: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, rank: int, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.rank = rank
        self.down_x = nn.Conv2d(dim, rank, 1, **dd)
        self.down_ctx = nn.Conv2d(dim, rank, 1, **dd)
        self.up = nn.Conv2d(rank, dim, 1, **dd)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.up(self.down_x(x) * self.down_ctx(context))


class LowRankMoE(nn.Module):
    """Per-image top-k mixture of low-rank experts with a residual: ``x + Σ_sel p_i · E_i(x, ctx)``.

    Router: global average pooling → bias-free linear → softmax (in float32). Each image goes to
    its ``top_k`` most probable experts; each chosen expert's output is scaled by its (not
    renormalised) probability, which is what carries the task gradient to the router.

    Args:
        dim: channels C.
        ranks: one expert per entry, with that bottleneck rank (CMFS: 2, 4, 8).
        top_k: experts per image.
        device: parameter device.
        dtype: parameter dtype.

    Returns:
        ``(y, balance_loss)``; see :func:`load_balancing_loss`.

    Shape:
        x, context: (B, C, H, W)  ->  y: (B, C, H, W), balance_loss: scalar
    """

    def __init__(self, dim: int, ranks: Sequence[int] = (2, 4, 8), top_k: int = 1, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        ranks = tuple(ranks)
        if not ranks or any(not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(f"ranks must be a non-empty sequence of positive ints, got {ranks!r}")
        if not 1 <= top_k <= len(ranks):
            raise ValueError(f"top_k must be between 1 and the number of experts ({len(ranks)}), got {top_k}")
        self.dim = dim
        self.top_k = top_k
        self.router = nn.Linear(dim, len(ranks), bias=False, **dd)
        self.experts = nn.ModuleList(LowRankExpert(dim, r, **dd) for r in ranks)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router probabilities and the chosen experts, most probable first.

        Shape:
            x: (B, C, H, W)  ->  probs: (B, E) float32 or wider; expert_index: (B, top_k)
        """
        check_shape(x, "B C H W", name="x", C=self.dim)
        logits = self.router(x.mean(dim=(2, 3)))
        probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return probs, probs.topk(self.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x, "B C H W", name="x", C=self.dim)
        check_shape(context, "B C H W", name="context", B=x.shape[0], C=self.dim, H=x.shape[2], W=x.shape[3])
        probs, expert_index = self.route(x)
        gates = torch.zeros_like(probs).scatter(1, expert_index, probs.gather(1, expert_index)).to(x.dtype)
        y = x
        for i, expert in enumerate(self.experts):
            y = y + gates[:, i, None, None, None] * expert(x, context)
        return y, load_balancing_loss(probs, expert_index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ranks={tuple(e.rank for e in self.experts)}, top_k={self.top_k}"


class _Calibration(nn.Module):
    """The experts' context: a coarse view (strided depth-wise pooling, ``recursive`` times, the
    same conv each time), refined, upsampled to the actual size and added back to the input."""

    def __init__(self, dim: int, recursive: int, device: DeviceLike, dtype: torch.dtype | None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.recursive = recursive
        self.agg_conv = nn.Sequential(nn.Conv2d(dim, dim, 4, stride=4, padding=2, groups=dim, **dd), nn.GELU())
        self.conv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd),
            nn.Conv2d(dim, dim, 1, **dd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = x
        for _ in range(self.recursive):
            coarse = self.agg_conv(coarse)
        coarse = F.interpolate(self.conv(coarse), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + coarse


class ResMoEBlock(nn.Module):
    """Pre-norm residual MoE block: ``x + MoEMixer(LN(x))``, then ``x + GatedFFN(LN(x))``.

    The mixer: 3×3 conv → GELU → 1×1 conv to 2C, channel shuffle (2 groups), split into the
    expert input ``u`` (LayerNorm → :class:`SequenceMamba` over row-major tokens → GELU) and the
    context (:class:`_Calibration`), :class:`LowRankMoE`, 1×1 projection.

    Args:
        dim: channels C.
        ranks: expert ranks.
        top_k: experts per image.
        use_shuffle: shuffle the 2C channels before the split (the public code does; it is a
            fixed permutation, kept so checkpoints map without reordering).
        recursive: how many times the context is pooled by 4.
        mamba_d_state: state size of the token mixer; ``None`` removes the mixer.
        mamba_bidirectional: the token mixer scans both ways (the public package) or causally.
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Returns:
        ``(x, balance_loss)``.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W), scalar
    """

    def __init__(
        self,
        dim: int,
        ranks: Sequence[int] = (2, 4, 8),
        top_k: int = 1,
        use_shuffle: bool = True,
        recursive: int = 2,
        mamba_d_state: int | None = 64,
        mamba_bidirectional: bool = False,
        scan_backend: str = "auto",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.use_shuffle = use_shuffle
        self.norm = LayerNorm2d(dim, **dd)
        self.conv_in = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, **dd),
            nn.GELU(),
            nn.Conv2d(dim, 2 * dim, 1, **dd),
        )
        self.token_norm = nn.LayerNorm(dim, **dd)
        self.token_mixer: nn.Module = (
            nn.Identity() if mamba_d_state is None
            else BidirectionalMamba(dim, d_state=mamba_d_state, expand=2.0, scan_backend=scan_backend, **dd)
            if mamba_bidirectional
            else SequenceMamba(dim, d_state=mamba_d_state, scan_backend=scan_backend, **dd)
        )
        self.calibrate = _Calibration(dim, recursive, **dd)
        self.moe = LowRankMoE(dim, ranks, top_k, **dd)
        self.proj = nn.Conv2d(dim, dim, 1, **dd)
        self.norm_2 = LayerNorm2d(dim, **dd)
        self.ffn = GatedFFN(dim, **dd)

    def _mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        feats = self.conv_in(x)
        if self.use_shuffle:
            feats = channel_shuffle(feats, 2)
        u, context = feats.chunk(2, dim=1)
        tokens = F.gelu(self.token_mixer(self.token_norm(u.flatten(2).transpose(1, 2))))
        u = tokens.transpose(1, 2).reshape(b, c, h, w)
        y, balance_loss = self.moe(u, self.calibrate(context))
        return self.proj(y), balance_loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x, "B C H W", name="x", C=self.dim)
        mixed, balance_loss = self._mix(self.norm(x))
        x = x + mixed
        return x + self.ffn(self.norm_2(x)), balance_loss


class StripConv(nn.Module):
    """Strip-convolution enhancement block (the public code's ``SME``), pre-norm residual.

    ``x + proj(Strip(q) ⊙ v)`` with ``q, v = split(GELU(1×1(LN(x))))`` and ``Strip`` a depth-wise
    1×k conv followed by a depth-wise k×1 conv: a k×k receptive field (11×11) for ``2k`` weights
    per channel, suited to long thin structures (poles, people, lane edges); then
    ``x + GatedFFN(LN(x))``.

    Args:
        dim: channels C.
        kernel_size: strip length k (odd, so H and W are kept).
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, dim: int, kernel_size: int = 11, device: DeviceLike = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int so the strips keep H and W, got {kernel_size}")
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.norm_1 = LayerNorm2d(dim, **dd)
        self.to_qv = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1, **dd), nn.GELU())
        self.strip = nn.Sequential(
            nn.Conv2d(dim, dim, (1, kernel_size), padding=(0, pad), groups=dim, **dd),
            nn.Conv2d(dim, dim, (kernel_size, 1), padding=(pad, 0), groups=dim, **dd),
        )
        self.proj = nn.Conv2d(dim, dim, 1, **dd)
        self.norm_2 = LayerNorm2d(dim, **dd)
        self.ffn = GatedFFN(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.dim)
        q, v = self.to_qv(self.norm_1(x)).chunk(2, dim=1)
        x = x + self.proj(self.strip(q) * v)
        return x + self.ffn(self.norm_2(x))


class MultiModalFeatureEnhancement(nn.Module):
    """MMFE: fuse one stage's RGB and thermal features, then refine with MoE and strip blocks.

    Args:
        dim: channels C of each modality and of the output.
        num_blocks: (ResMoEBlock, StripConv) pairs; 2 in CMFS.
        ranks: expert ranks.
        top_k: experts per image.
        strip_kernel: strip length of :class:`StripConv`.
        mamba_d_state: state size of the MoE blocks' token mixer; ``None`` removes it.
        mamba_bidirectional: the token mixer scans both ways (see :class:`ResMoEBlock`).
        scan_backend: selective-scan backend.
        device: parameter device.
        dtype: parameter dtype.

    Returns:
        ``(fused, balance_loss)``, the loss averaged over the blocks (1 when balanced), for the
        trainer to weight (Switch uses 0.01); the model never adds it to a task loss.

    Shape:
        x_rgb, x_thermal: (B, C, H, W)  ->  fused: (B, C, H, W), balance_loss: scalar
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 2,
        ranks: Sequence[int] = (2, 4, 8),
        top_k: int = 1,
        strip_kernel: int = 11,
        mamba_d_state: int | None = 64,
        mamba_bidirectional: bool = False,
        scan_backend: str = "auto",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        dd = factory_kwargs(device, dtype)
        self.dim = dim
        self.embed = ChannelEmbed(2 * dim, dim, **dd)
        self.moe_blocks = nn.ModuleList(
            ResMoEBlock(dim, ranks, top_k, mamba_d_state=mamba_d_state, mamba_bidirectional=mamba_bidirectional,
                        scan_backend=scan_backend, **dd)
            for _ in range(num_blocks)
        )
        self.strip_blocks = nn.ModuleList(StripConv(dim, strip_kernel, **dd) for _ in range(num_blocks))

    def forward(self, x_rgb: torch.Tensor, x_thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x_rgb, "B C H W", name="x_rgb", C=self.dim)
        b, _, h, w = x_rgb.shape
        check_shape(x_thermal, "B C H W", name="x_thermal", B=b, C=self.dim, H=h, W=w)
        fused = self.embed(torch.cat((x_rgb, x_thermal), dim=1))
        balance = fused.new_zeros((), dtype=torch.promote_types(fused.dtype, torch.float32))
        for moe_block, strip_block in zip(self.moe_blocks, self.strip_blocks):
            fused, block_balance = moe_block(fused)
            balance = balance + block_balance
            fused = strip_block(fused)
        return fused, balance / len(self.moe_blocks)
