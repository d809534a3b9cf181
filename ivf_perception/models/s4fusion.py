"""S4Fusion: saliency-aware cross-modal selective state-space fusion, plus our segmentation head.

Paper: Ma et al., "S4Fusion: Saliency-aware Selective State Space Model for Infrared Visible
Image Fusion" (2024). Reference code: github.com/zipper112/S4Fusion (read to understand the
architecture; nothing copied). The published weights are not used; ours are trained with
``training/`` and carry their own licence (the project's).

Architecture (DESIGN §5), U-shaped over 3 scales:

* overlapping patch embedding of each modality: a (stride + overlap)² convolution with stride
  ``patch_size`` (``paper``: the public code's 4×4 kernel, stride 3, one pixel of overlap, to
  H/3×W/3 tokens);
* per-modality encoders of VSS blocks, patch merging between scales;
* CMSA modules: ``cmsa_blocks`` Cross SS2D blocks (Patch Mark, Interleaving, Cross SS2D with
  modality-specific Δ/B/C over a shared hidden state, Recovering); the two recovered streams
  are summed into the scale's fused feature;
* a decoder of VSS blocks that upsamples (patch expanding) and adds the fused skip features;
* fold + linear output: each token predicts an overlapping (stride + overlap)² patch of the
  fused luminance, folded back to H×W with overlap averaging.

How the CMSA modules meet the decoder (``cmsa_wiring``):

* ``"public"`` (the public code, ``paper`` preset): CMSA fuses each encoder stage's *input*;
  the decoder starts from the sum of the two encoders' last outputs, and every decoder stage
  adds the CMSA feature of the next coarser scale *before* upsampling. The finest scale's CMSA
  output is never used in the public code (its parameters get no gradient), so it is not built
  here: the public model's 3.563 M parameters include 0.153 M of that dead branch.
* ``"all_scales"`` (ours, the bundled ``tiny`` weights): CMSA fuses each stage's *output*, the
  decoder starts from the coarsest CMSA feature and adds the finer ones after upsampling, so
  all three CMSA modules are trained and used. Kept as a switch because the bundled weights
  were trained with it (retraining them is a separate decision), not because it is shown to
  be better.

Differences from the public code, on purpose:

* Inputs are the product contract (RGB B×3×H×W, thermal B×1×H×W). The paper fuses
  luminance; we feed the visible branch RGB (colour helps segmentation), predict the fused Y
  channel and recombine it with the visible Cb/Cr (BT.601), the standard practice for colour
  fusion results.
* The fusion head predicts a correction, in logit space, to a base image, initialised at zero:
  an untrained model is a sensible fusion and training on a CPU converges in minutes instead
  of hours. ``fusion_base="average"`` (all presets) corrects the pixel average of Y_vi and the
  thermal image; ``"adaptive_blend"`` (the bundled ``tiny`` weights since stage 8) corrects a
  learnt per-pixel blend of the two that starts at the pixel maximum (see
  :class:`FoldFusionHead` for why).
* Our extension: a light SegFormer head (the shared
  :class:`~ivf_perception.models.layers.SegFormerHead`) on the decoder features of the three
  scales, so this fusion-only network also publishes label maps. ``num_classes=0`` removes it.
* Any H, W divisible by ``input_multiple`` (``patch_size``·4: 12 for ``paper``, 16 for the
  stride-4 presets); the engine pads and crops. The public embedding has no padding and needs
  H ≡ 1 (mod 12) (its 229-pixel crops); ours pads ⌈overlap/2⌉ pixels so any multiple works.
* ``tiny``/``small``/``test`` keep our stride-4 embedding (6×6 kernel, 2 pixels of overlap):
  (4/3)² ≈ 1.8× fewer tokens than stride 3, which the CPU presets need for speed.

Weights written before these switches existed carry no ``patch_overlap``/``cmsa_wiring``/
``fusion_base`` in their sidecar; :data:`LEGACY_ARGS` tells the weight loader to build them
with the old behaviour (stride 4, overlap 2, ``all_scales``, ``average``) whatever their
preset, and new exports record the switches explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.layers import CrossSS2D, DropPath, VSSBlock, get_norm_layer
from ivf_perception.models.layers.color import rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.segformer_head import SegFormerHead
from ivf_perception.models.registry import register_model

__all__ = ["S4Fusion", "S4FusionFeatures", "s4fusion", "test_s4fusion", "PRESET_ARGS", "LEGACY_ARGS",
           "CMSAWiring", "FusionBase"]

CMSAWiring = Literal["public", "all_scales"]
"""How the CMSA features feed the decoder (see the module docstring)."""

FusionBase = Literal["average", "adaptive_blend"]
"""What the fusion head corrects (see :class:`FoldFusionHead`)."""


# --------------------------------------------------------------------------- blocks


def _patch_padding(overlap: int) -> int:
    """Zero padding that makes a (stride + overlap) kernel with stride s give exactly H/s tokens.

    ``floor((H + 2p − s − o)/s) + 1 = H/s`` for H divisible by s needs ``0 <= 2p − o < s``:
    ``p = ⌈o/2⌉`` (1 for both the public overlap 1 and our overlap 2).
    """
    return (overlap + 1) // 2


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a (patch+overlap)² convolution with stride ``patch`` and LayerNorm.

    Shape:
        x: (B, C_in, H, W)  ->  (B, H/patch, W/patch, dim), channels-last tokens.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, overlap: int = 2,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size + overlap, stride=patch_size,
                              padding=_patch_padding(overlap), **dd)
        self.norm = nn.LayerNorm(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Halve the resolution: concatenate each 2×2 neighbourhood, LayerNorm, project 4C → 2C.

    Shape:
        x: (B, H, W, C)  ->  (B, H/2, W/2, 2C)
    """

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.norm = norm_layer(4 * dim, **dd)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Double the resolution: project C → 2C and rearrange into a 2×2 neighbourhood of C/2.

    Shape:
        x: (B, H, W, C)  ->  (B, 2H, 2W, C/2)
    """

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.expand = nn.Linear(dim, 2 * dim, bias=False, **dd)
        self.norm = norm_layer(dim // 2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, c // 2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 2)
        return self.norm(x)


class CMSABlock(nn.Module):
    """One cross-modal block: pre-norm Cross SS2D with a residual on each modality.

    Shape:
        ir, vi: (B, H, W, C)  ->  (ir', vi') of the same shape.
    """

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, drop_path: float,
                 norm_layer: Callable[..., nn.Module], scan_backend: str,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.norm_ir = norm_layer(dim, **dd)
        self.norm_vi = norm_layer(dim, **dd)
        self.cross = CrossSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend, **dd)
        self.drop_path = DropPath(drop_path)

    def forward(self, ir: torch.Tensor, vi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_ir, out_vi = self.cross(self.norm_ir(ir), self.norm_vi(vi))
        return ir + self.drop_path(out_ir), vi + self.drop_path(out_vi)


class CMSA(nn.Module):
    """Cross-modal saliency aggregation at one scale: a stack of CMSA blocks, then the sum.

    Shape:
        ir, vi: (B, H, W, C)  ->  (B, H, W, C) fused feature.
    """

    def __init__(self, dim: int, num_blocks: int, d_state: int, ssm_ratio: float, drop_path: float,
                 norm_layer: Callable[..., nn.Module], scan_backend: str,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CMSABlock(dim, d_state, ssm_ratio, drop_path, norm_layer, scan_backend, device=device, dtype=dtype)
            for _ in range(num_blocks)
        )

    def forward(self, ir: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            ir, vi = block(ir, vi)
        return ir + vi


# --------------------------------------------------------------------------- stages


class EncoderStage(nn.Module):
    """VSS blocks at one scale, followed by patch merging unless it is the last scale."""

    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths: list[float],
                 norm_layer: Callable[..., nn.Module], downsample: bool, scan_backend: str,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.blocks = nn.Sequential(*(
            VSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, drop_path=drop_paths[i],
                     norm_layer=norm_layer, scan_backend=scan_backend, **dd)
            for i in range(depth)
        ))
        self.downsample = PatchMerging(dim, norm_layer, **dd) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the scale's feature and the downsampled input of the next scale."""
        x = self.blocks(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class DecoderStage(nn.Module):
    """Optionally upsample from the coarser scale, add the fused skip, then VSS blocks.

    ``skip_before_upsample`` (the public wiring) adds the skip at the coarser scale and then
    upsamples; otherwise (ours) the skip is added at this stage's scale after upsampling.
    """

    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths: list[float],
                 norm_layer: Callable[..., nn.Module], upsample_from: int | None, scan_backend: str,
                 skip_before_upsample: bool = False,
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.skip_before_upsample = skip_before_upsample
        self.upsample = PatchExpand(upsample_from, norm_layer, **dd) if upsample_from else None
        self.blocks = nn.Sequential(*(
            VSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, drop_path=drop_paths[i],
                     norm_layer=norm_layer, scan_backend=scan_backend, **dd)
            for i in range(depth)
        ))

    def forward(self, x: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        if x is None:
            return self.blocks(skip)
        assert self.upsample is not None, "only a stage built with upsample_from takes a coarser input"
        if self.skip_before_upsample:
            return self.blocks(self.upsample(x + skip))
        return self.blocks(self.upsample(x) + skip)


# --------------------------------------------------------------------------- heads


class FoldFusionHead(nn.Module):
    """Fold + linear output: every token predicts an overlapping k×k patch of the fused Y.

    Overlapping predictions are averaged by dividing by the fold of ones, which makes the head
    resolution-agnostic. The result is a correction in logit space to a per-pixel base image
    (zero-initialised, see the module docstring):

    * ``"average"``: the pixel average of the visible luminance and the thermal image;
    * ``"adaptive_blend"``: ``IR + w·(Y_vi − IR)`` with ``w = sigmoid(bias + sharpness·G·(Y_vi − IR))``,
      ``bias`` and ``sharpness`` folded from the tokens like the correction. A large
      ``sharpness`` makes the base the pixel maximum, ``bias`` picks one source region by
      region. It starts at ``bias`` 0 and ``sharpness`` 1, i.e. (within a few grey levels of a
      tie) at the pixel maximum, the target of the intensity loss. Why: the correction comes
      from stride-4 tokens, so with the average as base the fused image's pixel-to-pixel detail
      is the average's, which halves each source's edges; a blend keeps the chosen source's
      full detail wherever ``w`` is near 0 or 1. Why start at the maximum: an average-base
      network fine-tuned into this head from ``sharpness`` 0 never moves it (its trained
      correction already brightens the average, so more sharpness first makes every loss term
      worse), although the pixel maximum has the lower training loss.

    Shape:
        tokens: (B, H/p, W/p, C), y_vi, ir: (B, 1, H, W)  ->  fused Y (B, 1, H, W) in (0, 1)
    """

    blend_gain: ClassVar[float] = 64.0
    """G: scales the luminance difference so that a sharpness of order 1 already selects the
    brighter source for differences of a few grey levels (AdamW moves weights ~lr per step)."""

    def __init__(self, dim: int, patch_size: int = 4, overlap: int = 2, base: FusionBase = "average",
                 device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if base not in get_args(FusionBase):
            raise ValueError(f"fusion_base must be one of {', '.join(get_args(FusionBase))}, got {base!r}")
        self.kernel = patch_size + overlap
        self.stride = patch_size
        self.padding = _patch_padding(overlap)
        self.proj = nn.Linear(dim, self.kernel * self.kernel, device=device, dtype=dtype)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.blend: nn.Linear | None = None
        if base == "adaptive_blend":
            self.blend = nn.Linear(dim, 2 * self.kernel * self.kernel, device=device, dtype=dtype)
            nn.init.zeros_(self.blend.weight)
            nn.init.zeros_(self.blend.bias)
            with torch.no_grad():  # channels: bias (k² outputs), then sharpness (k² outputs)
                self.blend.bias[self.kernel * self.kernel:] = 1.0

    def _fold(self, values: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C·k²) per-token patches -> (B, C, h·p, w·p), overlapping patches summed."""
        b, h, w, _ = values.shape
        cols = values.reshape(b, h * w, -1).transpose(1, 2)
        return F.fold(cols, output_size=(h * self.stride, w * self.stride), kernel_size=self.kernel,
                      stride=self.stride, padding=self.padding)

    def forward(self, tokens: torch.Tensor, y_vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        patches = self.proj(tokens)
        # How many patches cover each pixel (1, 1, H, W): the divisor that averages the overlaps,
        # shared by every folded output.
        count = self._fold(torch.ones_like(patches[:1]))
        correction = self._fold(patches) / count
        if self.blend is None:
            base = 0.5 * (y_vi + ir)
        else:
            bias, sharpness = (self._fold(self.blend(tokens)) / count).unbind(dim=1)
            difference = y_vi - ir
            weight = torch.sigmoid(bias.unsqueeze(1) + sharpness.unsqueeze(1) * self.blend_gain * difference)
            base = ir + weight * difference
        base = base.clamp(1e-3, 1 - 1e-3)
        return torch.sigmoid(torch.logit(base) + correction)


# --------------------------------------------------------------------------- model


@dataclass
class S4FusionFeatures:
    """What ``forward_features`` hands to ``forward_head``: decoder features, finest first."""

    decoder: list[torch.Tensor]


class S4Fusion(FusionSegModel):
    """S4Fusion with our segmentation head (see the module docstring).

    Args:
        num_classes: segmentation classes; 0 builds a fusion-only model (``logits`` is None).
        dims: channels per scale, e.g. (48, 96, 192).
        depths: VSS blocks per encoder scale; the decoder mirrors them.
        d_state: SSM state size of the VSS blocks.
        fusion_d_state: SSM state size of the Cross SS2D blocks.
        ssm_ratio: SSM expansion (d_inner = ssm_ratio · dim).
        cmsa_blocks: Cross SS2D blocks per scale.
        patch_size: patch embedding stride (the fold head uses the same geometry): 3 in the
            public code, 4 in our CPU presets.
        patch_overlap: kernel minus stride of the patch embedding and fold head: 1 in the public
            code (4×4 kernel), 2 in our CPU presets (6×6 kernel).
        cmsa_wiring: ``"public"`` or ``"all_scales"`` (see the module docstring).
        fusion_base: ``"average"`` or ``"adaptive_blend"``: the image the fusion head corrects
            (see :class:`FoldFusionHead`).
        drop_path_rate: stochastic depth, linearly increasing over the encoder blocks.
        seg_embed_dim: channels of the segmentation head.
        norm_layer: name or callable of the token norm.
        scan_backend: selective-scan backend ("auto", "chunked", "ref", "cuda").
        preset: the preset name recorded in the weight sidecar.
        device, dtype: where to create parameters.
    """

    variant = "s4fusion"
    # Fixed-size ONNX only. Traced with symbolic H×W, torch.export specialises them to the traced
    # size ("specialized it to be a constant"): ~200 shape guards, from the scan's chunk padding
    # (`if pad:` in _to_chunks), the view/reshape divisibility of the scan layouts and a chunk
    # count of 1 in the deeper stages; the dynamo ONNX exporter then writes a graph that only
    # runs at the traced size (export_onnx's check at a second size catches it).
    _dynamic_onnx = False

    def __init__(
        self,
        num_classes: int = 9,
        dims: tuple[int, ...] = (48, 96, 192),
        depths: tuple[int, ...] = (1, 2, 1),
        d_state: int = 12,
        fusion_d_state: int = 18,
        ssm_ratio: float = 1.5,
        cmsa_blocks: int = 3,
        patch_size: int = 3,
        patch_overlap: int = 1,
        cmsa_wiring: CMSAWiring = "public",
        fusion_base: FusionBase = "average",
        drop_path_rate: float = 0.0,
        seg_embed_dim: int = 64,
        norm_layer: str | Callable[..., nn.Module] = "layernorm",
        scan_backend: str = "auto",
        preset: str = "custom",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} must have the same length")
        if any(dims[i + 1] != 2 * dims[i] for i in range(len(dims) - 1)):
            raise ValueError(f"dims must double per scale (patch merging 4C -> 2C), got {tuple(dims)}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if cmsa_wiring not in get_args(CMSAWiring):
            raise ValueError(f"cmsa_wiring must be one of {', '.join(get_args(CMSAWiring))}, got {cmsa_wiring!r}")
        if patch_size < 1 or not 0 <= patch_overlap < 2 * patch_size:
            raise ValueError(f"need patch_size >= 1 and 0 <= patch_overlap < 2*patch_size, got "
                             f"{patch_size} and {patch_overlap}")
        dd = factory_kwargs(device, dtype)
        norm = get_norm_layer(norm_layer)
        self.num_classes = int(num_classes)
        self.preset = preset
        self.input_multiple = patch_size * 2 ** (len(dims) - 1)
        self.cmsa_wiring = cmsa_wiring
        self._args = dict(dims=list(dims), depths=list(depths), d_state=d_state,
                          fusion_d_state=fusion_d_state, ssm_ratio=ssm_ratio, cmsa_blocks=cmsa_blocks,
                          patch_size=patch_size, patch_overlap=patch_overlap, cmsa_wiring=cmsa_wiring,
                          fusion_base=fusion_base, seg_embed_dim=seg_embed_dim)
        public = cmsa_wiring == "public"

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        enc_rates = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
        last = len(dims) - 1

        self.embed_ir = OverlapPatchEmbed(1, dims[0], patch_size, patch_overlap, **dd)
        self.embed_vi = OverlapPatchEmbed(3, dims[0], patch_size, patch_overlap, **dd)
        self.encoder_ir = nn.ModuleList(
            EncoderStage(dims[i], depths[i], d_state, ssm_ratio, enc_rates[i], norm, i < last, scan_backend, **dd)
            for i in range(len(dims))
        )
        self.encoder_vi = nn.ModuleList(
            EncoderStage(dims[i], depths[i], d_state, ssm_ratio, enc_rates[i], norm, i < last, scan_backend, **dd)
            for i in range(len(dims))
        )
        # Keyed by scale ("0" finest): the public wiring never uses scale 0, so it is not built;
        # the keys give the same state-dict names as a list for the all-scales wiring.
        self.fuser = nn.ModuleDict({
            str(i): CMSA(dims[i], cmsa_blocks, fusion_d_state, ssm_ratio, 0.0, norm, scan_backend, **dd)
            for i in range(1 if public else 0, len(dims))
        })
        # Decoder from coarsest to finest scale.
        self.decoder = nn.ModuleList(
            DecoderStage(dims[i], depths[i], d_state, ssm_ratio, enc_rates[i][::-1], norm,
                         dims[i + 1] if i < last else None, scan_backend, skip_before_upsample=public, **dd)
            for i in reversed(range(len(dims)))
        )
        self.decoder_norm = norm(dims[0], **dd)
        self.fusion_head = FoldFusionHead(dims[0], patch_size, patch_overlap, fusion_base, **dd)
        self.seg_head = (
            SegFormerHead(list(dims), num_classes, seg_embed_dim, **dd) if num_classes > 0 else None
        )
        self.feature_info = [
            {"num_chs": dims[i], "reduction": patch_size * 2 ** i, "module": f"decoder.{last - i}"}
            for i in range(len(dims))
        ]

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> S4FusionFeatures:
        ir: torch.Tensor | None = self.embed_ir(thermal)
        vi: torch.Tensor | None = self.embed_vi(rgb)
        public = self.cmsa_wiring == "public"
        skips: list[torch.Tensor] = []  # what each decoder stage adds, coarsest first once reversed
        feat_ir = feat_vi = None
        for scale, (stage_ir, stage_vi) in enumerate(zip(self.encoder_ir, self.encoder_vi)):
            assert ir is not None and vi is not None
            if public and str(scale) in self.fuser:  # CMSA on the stage inputs
                skips.append(self.fuser[str(scale)](ir, vi))
            feat_ir, ir = stage_ir(ir)
            feat_vi, vi = stage_vi(vi)
            if not public:  # CMSA on the stage outputs
                skips.append(self.fuser[str(scale)](feat_ir, feat_vi))
        if public:  # the decoder starts from the summed encoders' last outputs
            assert feat_ir is not None and feat_vi is not None
            skips.append(feat_ir + feat_vi)
        x = None
        decoded = []
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(x, skip)
            decoded.append(x)
        decoded.reverse()
        decoded[0] = self.decoder_norm(decoded[0])
        return S4FusionFeatures(decoder=decoded)

    def forward_head(self, features: S4FusionFeatures, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        ycbcr = rgb_to_ycbcr(rgb)
        y_vi = ycbcr[:, :1]
        fused_y = self.fusion_head(features.decoder[0], y_vi, thermal)
        fused = ycbcr_to_rgb(torch.cat((fused_y, ycbcr[:, 1:]), dim=1)).clamp(0.0, 1.0)
        logits = None
        if self.seg_head is not None:
            channels_first = [f.permute(0, 3, 1, 2) for f in features.decoder]
            logits = self.seg_head(channels_first, out_size=tuple(rgb.shape[-2:]))
        aux: dict[str, Any] = {"fused_y": fused_y} if self.training else {}
        return FusionSegOutput(fused=fused, logits=logits, aux=aux)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model_args": dict(self._args)}


# --------------------------------------------------------------------------- builders


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: S4Fusion) -> dict[str, torch.Tensor]:
    """Adapt a state dict to ``model``: drop the segmentation head when the class count differs.

    This is how fusion weights are reused for a new class table: the fusion path loads, the
    head is trained anew. Other mismatches are left for ``load_state_dict`` to report.
    """
    own = model.state_dict()
    return {
        k: v for k, v in state_dict.items()
        if not (k.startswith("seg_head.classifier.") and k in own and own[k].shape != v.shape)
    }


def _create_s4fusion(preset: str, **kwargs: Any) -> S4Fusion:
    if preset not in PRESET_ARGS:
        raise ValueError(f"Unknown S4Fusion preset '{preset}'; expected one of {', '.join(PRESET_ARGS)}")
    args = {**PRESET_ARGS[preset], **kwargs}
    return S4Fusion(preset=preset, **args)


_OURS_GEOMETRY: dict[str, Any] = dict(patch_size=4, patch_overlap=2, cmsa_wiring="all_scales")
"""Our stride-4 embedding and all-scales wiring (the CPU presets and every pre-switch weight file)."""

PRESET_ARGS: dict[str, dict[str, Any]] = {
    # The published configuration (DESIGN §5) with the public code's embedding and wiring.
    "paper": dict(dims=(48, 96, 192), depths=(1, 2, 1), d_state=12, fusion_d_state=18, ssm_ratio=1.5,
                  cmsa_blocks=3, patch_size=3, patch_overlap=1, cmsa_wiring="public"),
    # CPU/embedded: narrower, one block per scale, two cross-modal blocks.
    "small": dict(dims=(32, 64, 128), depths=(1, 1, 1), d_state=8, fusion_d_state=12, ssm_ratio=1.5,
                  cmsa_blocks=2, seg_embed_dim=48, **_OURS_GEOMETRY),
    # The fastest usable configuration (bundled default on CPU robots).
    "tiny": dict(dims=(16, 32, 64), depths=(1, 1, 1), d_state=6, fusion_d_state=8, ssm_ratio=1.0,
                 cmsa_blocks=1, seg_embed_dim=32, **_OURS_GEOMETRY),
    # Micro model for tests only (timm's test_* habit).
    "test": dict(dims=(8, 16, 32), depths=(1, 1, 1), d_state=2, fusion_d_state=2, ssm_ratio=1.0,
                 cmsa_blocks=1, seg_embed_dim=8, **_OURS_GEOMETRY),
}

LEGACY_ARGS: dict[str, dict[str, Any]] = {
    preset: dict(_OURS_GEOMETRY, fusion_base="average") for preset in PRESET_ARGS
}
"""What weights saved without these keys were trained with: before the switches existed every
preset used our geometry and corrected the pixel average, so the weight loader fills them in
under the saved ``model_args`` (:func:`~ivf_perception.models.registry.with_legacy_args`)."""


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def s4fusion(preset: str = "paper", **kwargs: Any) -> S4Fusion:
    """S4Fusion (paper preset: dims 48/96/192, depths 1/2/1, d_state 12, fusion d_state 18)."""
    return _create_s4fusion(preset, **kwargs)


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def test_s4fusion(preset: str = "test", **kwargs: Any) -> S4Fusion:
    """Micro S4Fusion for CPU tests of every code path."""
    return _create_s4fusion(preset, **kwargs)

