"""CMFS's Frequency-Spatial Collaboration (FSC) block, paper eqs. 6-10.

Su et al., "CMFS: CLIP-Guided Modality Interaction for Mitigating Noise in Multi-Modal Image
Fusion and Segmentation", IJCAI 2025; written from the paper and a reading of the public code
(``SuGuilin/IJCAI2025-CMFS``, ``models/modules.py``: ``FSCModule``), no code copied. The CMFS
encoder applies one FSC per modality after stages 0 and 1 as ``x = FSC(x) + x``; the residual
is the caller's.

Three paths, all at the input resolution:

- **wavelet** (eq. 6): 1×1 conv + GELU, 2-level Haar DWT laid out as one pyramid image, norm,
  an SS2D reading the pyramid window by window (sub-band neighbourhoods stay contiguous in the
  sequence) with a learnable skip scale, inverse DWT. It models multi-scale texture/noise.
- **spatial** (eq. 7, MambaIR's residual state-space block): ``s1·x + SS2D(norm(x))`` with a
  plain cross scan, then ``s2·x + CAB(norm(x))``.
- **frequency fusion** (eqs. 8-10): the two paths concatenated, their amplitude spectrum
  re-weighted (1×1 conv + LeakyReLU, twice) with the phase kept, back to space, 1×1 conv to C
  + 3×3 depth-wise conv + GELU, then a squeeze-excitation channel attention.

Differences from the public code, all fixes:

- its local-window scan is not inverted before the directions are summed (outputs land on the
  wrong pixels), crops H, W to multiples of the window, and reads position-in-window before the
  window index; ours is LocalMamba's window order with its true inverse
  (:func:`~ivf_perception.models.layers.window_scan`) for any H, W;
- it pads for the DWT by the wrong amount for most sizes; ours pads to a multiple of
  ``2**dwt_levels`` by replication and crops back (:func:`~ivf_perception.models.ops.dwt2`);
- it takes ``abs`` of the inverse FFT (losing the sign of the features) and adds 1e-8 at
  three places; ours returns the inverse FFT as is (the gradients are finite without the
  epsilons);
- its depth-wise conv pads by reflection, which fails on a 1-pixel map; ours replicates;
- its SS2D and DWT need CUDA extensions at import; ours run anywhere.

Parameter names of the public checkpoint map as: ``conv_init.0`` → ``wavelet_proj.0``,
``ln_11`` → ``wavelet_norm``, ``local_attention`` → ``wavelet_ssm``, ``skip_scale1`` →
``wavelet_skip``, ``ln_1`` → ``spatial_norm``, ``vanilla_attention`` → ``spatial_ssm``,
``skip_scale`` → ``spatial_skip``, ``ln_2`` → ``cab_norm``, ``conv_blk.cab`` → ``cab.body``,
``skip_scale2`` → ``cab_skip``, ``denoise_conv`` → ``freq_filter.amplitude``, ``dconv`` →
``fuse``, ``sca`` → ``channel_attn.attention``.
"""

from __future__ import annotations

import torch
from torch import nn

from ivf_perception.checks import check_shape
from ivf_perception.models.layers import (
    SS2D,
    ChannelAttention,
    ChannelAttentionBlock,
    DropPath,
    FFTAmplitudeFilter,
    get_norm_layer,
)
from ivf_perception.models.layers.factories import NormFactory, factory_kwargs
from ivf_perception.models.ops import dwt2, idwt2, pack_subbands, unpack_subbands

__all__ = ["FrequencySpatialCollaboration"]


class FrequencySpatialCollaboration(nn.Module):
    """FSC: wavelet-domain and spatial state-space paths fused by a Fourier amplitude filter.

    Args:
        dim: channels C.
        d_state: SSM state size of both SS2Ds (CMFS: ``8 * 2**stage``).
        ssm_ratio: SS2D inner width relative to ``dim`` (CMFS: 4.0).
        window_size: side of the scan window of the wavelet path's SS2D (CMFS: 4).
        dwt_levels: Haar decomposition levels of the wavelet path (CMFS: 2).
        drop_path: stochastic-depth probability of the three residual sub-branches.
        norm_layer: name or constructor of the channels-last norms, see :func:`get_norm_layer`.
        scan_backend: selective-scan backend of both SS2Ds.
        device: parameter device.
        dtype: parameter dtype.

    Shape:
        x: (B, C, H, W)  ->  (B, C, H, W), any H, W >= 1 (no outer residual added).
    """

    def __init__(
        self,
        dim: int,
        d_state: int,
        ssm_ratio: float = 4.0,
        window_size: int = 4,
        dwt_levels: int = 2,
        drop_path: float = 0.0,
        norm_layer: str | NormFactory | None = "layernorm",
        scan_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(dwt_levels, bool) or not isinstance(dwt_levels, int) or dwt_levels < 1:
            raise ValueError(f"dwt_levels must be a positive int, got {dwt_levels!r}")
        dd = factory_kwargs(device, dtype)
        norm = get_norm_layer(norm_layer)
        self.dim = dim
        self.dwt_levels = dwt_levels
        self.drop_path = DropPath(drop_path)

        self.wavelet_proj = nn.Sequential(nn.Conv2d(dim, dim, 1, **dd), nn.GELU())
        self.wavelet_norm = norm(dim, **dd)
        self.wavelet_ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_order="window", window_size=window_size,
                                scan_backend=scan_backend, **dd)
        self.wavelet_skip = nn.Parameter(torch.ones(dim, **dd))

        self.spatial_norm = norm(dim, **dd)
        self.spatial_ssm = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend, **dd)
        self.spatial_skip = nn.Parameter(torch.ones(dim, **dd))
        self.cab_norm = norm(dim, **dd)
        self.cab = ChannelAttentionBlock(dim, compress_ratio=3, squeeze_factor=12, **dd)
        self.cab_skip = nn.Parameter(torch.ones(dim, **dd))

        self.freq_filter = FFTAmplitudeFilter(2 * dim, negative_slope=0.1, **dd)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 1, **dd),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, padding_mode="replicate", **dd),
            nn.GELU(),
        )
        self.channel_attn = ChannelAttention(dim, squeeze_factor=4, act_layer=nn.GELU, **dd)

    def forward_wavelet(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6: SSM over the packed Haar pyramid of the projected map, back to space.

        Shape:
            x: (B, C, H, W)  ->  (B, C, H, W)
        """
        pyramid = pack_subbands(*dwt2(self.wavelet_proj(x), self.dwt_levels)).permute(0, 2, 3, 1)
        pyramid = pyramid * self.wavelet_skip + self.drop_path(self.wavelet_ssm(self.wavelet_norm(pyramid)))
        yl, yh = unpack_subbands(pyramid.permute(0, 3, 1, 2), self.dwt_levels)
        return idwt2(yl, yh, size=x.shape[-2:])

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 7: residual SS2D then residual CAB, each with a learnable skip scale.

        Shape:
            x: (B, C, H, W)  ->  (B, C, H, W)
        """
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens * self.spatial_skip + self.drop_path(self.spatial_ssm(self.spatial_norm(tokens)))
        cab = self.cab(self.cab_norm(tokens).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = tokens * self.cab_skip + self.drop_path(cab)
        return tokens.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="x", C=self.dim)
        both = torch.cat([self.forward_spatial(x), self.forward_wavelet(x)], dim=1)
        return self.channel_attn(self.fuse(self.freq_filter(both)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dwt_levels={self.dwt_levels}"
