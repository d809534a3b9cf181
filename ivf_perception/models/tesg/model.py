"""The TeSG network, its presets and registration.

Paper: Zhu, Chen, Wei, Wang, Gao, "TeSG: Textual Semantic Guidance for Infrared and Visible Image
Fusion" (arXiv 2506.16730, 2025). No public code exists; this is our reconstruction of the
paper's equations 1–10 (specification: shared/specs/UPFUSION_TESG.md §2, §4.3–4.4, §5). No
weights are published.

What the paper fixes [P] and we build exactly:

* two encoders, each run on the whole, the masked and the inverse-masked image (eq. 4's six
  features F_v, F_v^m, F_v^m̄, F_i, F_i^m, F_i^m̄; three real passes, not feature masking);
* MGCA: four cross-attentions (IR reconstructs visible and vice versa, inside M and inside
  1 − M) and the sums of eq. 6 (:mod:`~ivf_perception.models.tesg.fusion`);
* TDAF: TIVR cross-attention onto the text tokens (eq. 7), the gates (eq. 8), the spatial α
  (eq. 9) and eq. 10 with its (1 + G) factors; then a decoder of transformer blocks;
* the ablations "w/o MGCA" (``mgca=False``), "w/o TIVR" (``tivr=False``), "w/o GAF" (``gaf=False``).

Our reconstruction [R] where the paper is silent (spec §2.2–2.4, §2.8):

* single resolution (no down-sampling; the paper trains on 96×96 crops and names no levels);
* encoder = Conv3×3(c_in→C, no bias) + Restormer blocks (heads 1, GDFN 2.66, no bias, WithBias
  LayerNorm); the visible encoder reads RGB (3 channels), the IR encoder 1 channel; weights
  shared within a modality across its three inputs (the three passes run as one batch);
* CA = Restormer-style transposed (channel) cross-attention block, queries from the feature being
  reconstructed; four separate blocks;
* TIVR = multi-head pixel-to-token attention (no positional term), LayerNorm on both sides,
  residual ``F_r = X + …``; 8 heads in ``paper``;
* W_v, W_i = Conv3×3(C→C, bias); Φ_SA = Conv1×1(2C→C) → ReLU → Conv1×1(C→1), α one map
  broadcast over the channels;
* decoder = Restormer blocks + Conv3×3(C→3, no bias), clamped to [0, 1] (RGB output: the colour
  loss implies one);
* F_t = the full token sequence of the diffusion model's text encoder (L × d_t; d_t 1024 for
  SD-2.1, a parameter) — a single pooled vector would make eq. 7's softmax trivial;
* mask M: B×1×H×W in [0, 1] at image resolution, multiplied into every image channel;
* "w/o GAF" decodes ``F_vi + F_iv`` (no gates, no α, no text).

Our extensions (not TeSG):

* **fallback without guidance** (spec §4.3): ``forward(rgb, thermal)`` without ``guidance`` uses
  the "w/o MGCA" wiring (each encoder once, the foreground CA blocks on whole-image features)
  and the stored text tokens ``fallback_text`` (zeros until set, e.g. from the most frequent
  training caption); so every caller that knows nothing of guidance keeps working. Training with
  guidance dropout keeps this path in distribution;
* our segmentation head (:mod:`~ivf_perception.models.tesg.seg_head`) on the decoder features,
  so the node publishes labels; ``num_classes=0`` removes it (and the multiple-of-8 input rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ivf_perception.checks import checks_enabled
from ivf_perception.guidance import Guidance, GuidanceError
from ivf_perception.io.tensor_files import TensorFileError, read_tensor_file
from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.restormer import TransformerBlock
from ivf_perception.models.registry import register_model
from ivf_perception.models.tesg.fusion import MGCA, TDAF
from ivf_perception.models.tesg.seg_head import TeSGSegHead

__all__ = ["PRESET_ARGS", "TeSG", "TeSGEncoder", "TeSGFeatures", "tesg", "test_tesg"]


@dataclass
class TeSGFeatures:
    """What ``forward_features`` hands to ``forward_head`` (and tests inspect).

    Attributes:
        f_v, f_i: whole-image encoder features (B, C, H, W).
        f_vi, f_iv: MGCA's reconstructions (eq. 6, or the whole-image wiring).
        fused: TDAF's output F (eq. 10, or ``F_vi + F_iv`` without GAF).
        alpha: the spatial weight α (B, 1, H, W), None without GAF.
        decoded: decoder features before the output convolution (B, C, H, W).
        guided: whether the mask-split wiring ran (False: fallback / w/o MGCA).
    """

    f_v: torch.Tensor
    f_i: torch.Tensor
    f_vi: torch.Tensor
    f_iv: torch.Tensor
    fused: torch.Tensor
    alpha: torch.Tensor | None
    decoded: torch.Tensor
    guided: bool


def _blocks(n: int, dim: int, heads: int, ffn: float, bias: bool, norm: str, dd: Any) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, ffn, bias, norm, **dd) for _ in range(n)))


class TeSGEncoder(nn.Module):
    """Conv3×3(c_in→C, no bias) + Restormer blocks at full resolution.

    Shape:
        x: (B, c_in, H, W)  ->  (B, C, H, W)
    """

    def __init__(self, in_chans: int, dim: int, num_blocks: int, num_heads: int, ffn_expansion: float,
                 bias: bool, norm_type: str, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = factory_kwargs(device, dtype)
        self.embed = nn.Conv2d(in_chans, dim, 3, padding=1, bias=False, **dd)
        self.blocks = _blocks(num_blocks, dim, num_heads, ffn_expansion, bias, norm_type, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(x))

    def three_passes(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E(x), E(M ⊙ x), E((1 − M) ⊙ x)``, run as one batch (the blocks act per sample)."""
        out = self(torch.cat((x, mask * x, (1 - mask) * x), dim=0))
        whole, masked, inverse = out.chunk(3, dim=0)
        return whole, masked, inverse


class TeSG(FusionSegModel):
    """TeSG with our fallback and segmentation head (see the module docstring).

    Args:
        num_classes: segmentation classes; 0 builds the fusion-only network.
        dim: feature width C.
        encoder_blocks: Restormer blocks per encoder.
        decoder_blocks: Restormer blocks of the decoder.
        heads: heads of the Restormer and CA blocks.
        text_heads: heads of TIVR (2C must split into them).
        text_dim: d_t, the width of the guidance text tokens.
        text_len: L of the stored fallback tokens.
        ffn_expansion: GDFN expansion.
        bias: bias of the Restormer/CA convolutions.
        norm_type: Restormer LayerNorm (``WithBias`` / ``BiasFree``).
        mgca: False builds the "w/o MGCA" ablation (whole-image CA, the mask is never used).
        tivr: False builds "w/o TIVR" (α without text).
        gaf: False builds "w/o GAF" (decode ``F_vi + F_iv``).
        seg_embed_dim: width of our segmentation head.
        fallback_text: L×d_t tokens (tensor, or a safetensors/PyTorch file holding a
            ``fallback_text`` or ``text_tokens`` tensor) for the no-guidance path.
        preset: the preset name recorded in the weight sidecar.
        device, dtype: where to create parameters.
    """

    variant = "tesg"
    accepts_guidance = True
    fallback_text: torch.Tensor

    def __init__(
        self,
        num_classes: int = 9,
        dim: int = 48,
        encoder_blocks: int = 4,
        decoder_blocks: int = 4,
        heads: int = 1,
        text_heads: int = 8,
        text_dim: int = 1024,
        text_len: int = 77,
        ffn_expansion: float = 2.66,
        bias: bool = False,
        norm_type: str = "WithBias",
        mgca: bool = True,
        tivr: bool = True,
        gaf: bool = True,
        seg_embed_dim: int = 64,
        fallback_text: torch.Tensor | str | os.PathLike[str] | None = None,
        preset: str = "custom",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if (2 * dim) % text_heads:
            raise ValueError(f"TeSG: TIVR's {2 * dim} channels (2·dim) do not split into {text_heads} text_heads")
        if text_dim < 1 or text_len < 1:
            raise ValueError(f"text_dim and text_len must be >= 1, got {text_dim} and {text_len}")
        dd = factory_kwargs(device, dtype)
        self.num_classes = int(num_classes)
        self.preset = preset
        self.text_dim = int(text_dim)
        self.mgca_enabled = bool(mgca)
        self._args = dict(dim=dim, encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks, heads=heads,
                          text_heads=text_heads, text_dim=text_dim, text_len=text_len, ffn_expansion=ffn_expansion,
                          bias=bias, norm_type=norm_type, mgca=mgca, tivr=tivr, gaf=gaf, seg_embed_dim=seg_embed_dim)
        enc: dict[str, Any] = dict(num_blocks=encoder_blocks, num_heads=heads, ffn_expansion=ffn_expansion,
                                   bias=bias, norm_type=norm_type)
        self.encoder_vi = TeSGEncoder(3, dim, **enc, **dd)
        self.encoder_ir = TeSGEncoder(1, dim, **enc, **dd)
        self.mgca = MGCA(dim, heads, ffn_expansion, bias, norm_type, split=mgca, **dd)
        self.tdaf = TDAF(dim, text_dim, text_heads, tivr=tivr, gaf=gaf, norm_type=norm_type, **dd)
        self.decoder = _blocks(decoder_blocks, dim, heads, ffn_expansion, bias, norm_type, dd)
        self.output = nn.Conv2d(dim, 3, 3, padding=1, bias=False, **dd)
        self.register_buffer("fallback_text", torch.zeros(text_len, text_dim, **dd))
        self.seg_head = TeSGSegHead(dim, num_classes, seg_embed_dim, **dd) if num_classes > 0 else None
        self.input_multiple = TeSGSegHead.multiple if self.seg_head is not None else 1
        self.feature_info = [{"num_chs": dim, "reduction": 1, "module": "decoder"}]
        if fallback_text is not None:
            self.set_fallback_text(fallback_text)

    # ------------------------------------------------------------------ fallback text

    def set_fallback_text(self, tokens: torch.Tensor | str | os.PathLike[str]) -> None:
        """Store the L×d_t text tokens the no-guidance path uses (a tensor or a tensor file).

        Raises:
            GuidanceError: unreadable file, no such tensor, wrong shape, non-finite values.
        """
        if not isinstance(tokens, torch.Tensor):
            path = Path(tokens)
            try:
                tensors = read_tensor_file(path, what="TeSG fallback text tokens")
            except TensorFileError as exc:
                raise GuidanceError(str(exc)) from exc
            key = next((k for k in ("fallback_text", "text_tokens") if k in tensors), None)
            if key is None:
                raise GuidanceError(f"{path}: no 'fallback_text' or 'text_tokens' tensor (found {sorted(tensors)[:5]})")
            tokens = tensors[key]
        if tokens.ndim == 3 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tuple(tokens.shape) != tuple(self.fallback_text.shape):
            raise GuidanceError(f"fallback text tokens: expected {tuple(self.fallback_text.shape)} "
                                f"(text_len × text_dim), got {tuple(tokens.shape)}")
        if not tokens.is_floating_point() or not torch.isfinite(tokens).all():
            raise GuidanceError("fallback text tokens must be finite floating values")
        with torch.no_grad():
            self.fallback_text.copy_(tokens.to(self.fallback_text))

    def has_fallback_text(self) -> bool:
        """Whether fallback tokens were set (the buffer starts at zero)."""
        return bool(self.fallback_text.abs().sum() > 0)

    # ------------------------------------------------------------------ forward

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor,
                         guidance: Guidance | None = None) -> TeSGFeatures:
        fallback = self.fallback_text.unsqueeze(0).expand(rgb.shape[0], -1, -1)
        text = fallback if guidance is None else guidance.text_tokens
        guided = guidance is not None and self.mgca_enabled
        if guided:
            assert guidance is not None
            mask = guidance.mask.to(rgb.dtype)
            f_v, f_v_m, f_v_mbar = self.encoder_vi.three_passes(rgb, mask)
            f_i, f_i_m, f_i_mbar = self.encoder_ir.three_passes(thermal, mask)
            f_vi, f_iv = self.mgca(f_v_m, f_i_m, f_v_mbar, f_i_mbar)
        else:
            f_v, f_i = self.encoder_vi(rgb), self.encoder_ir(thermal)
            f_vi, f_iv = self.mgca.whole(f_v, f_i)
        fused, alpha = self.tdaf(f_v, f_i, f_vi, f_iv, text)
        return TeSGFeatures(f_v=f_v, f_i=f_i, f_vi=f_vi, f_iv=f_iv, fused=fused, alpha=alpha,
                            decoded=self.decoder(fused), guided=guided)

    def forward_head(self, features: TeSGFeatures, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        raw = self.output(features.decoded)
        logits = self.seg_head(features.decoded) if self.seg_head is not None else None
        aux: dict[str, Any] = {"fused_raw": raw} if self.training else {}
        return FusionSegOutput(fused=raw.clamp(0.0, 1.0), logits=logits, aux=aux)

    def forward(self, rgb: torch.Tensor, thermal: torch.Tensor,
                guidance: Guidance | None = None) -> FusionSegOutput:
        """Fuse (and segment) a batch, with TeSG guidance or the fallback.

        Args:
            rgb: (B, 3, H, W) in [0, 1].
            thermal: (B, 1, H, W) in [0, 1].
            guidance: mask (B, 1, H, W) and text tokens (B, L, text_dim); None for the fallback.

        Raises:
            ShapeError: images of the wrong layout or size.
            GuidanceError: guidance that does not fit the images or the network.
        """
        self.check_input(rgb, thermal)
        if guidance is not None and checks_enabled():
            if not isinstance(guidance, Guidance):
                raise GuidanceError(f"guidance: expected an ivf_perception.guidance.Guidance, "
                                    f"got {type(guidance).__name__}")
            guidance.check_for(rgb, text_dim=self.text_dim)
        return self.forward_head(self.forward_features(rgb, thermal, guidance), rgb, thermal)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model_args": dict(self._args)}


# --------------------------------------------------------------------------- builders

PRESET_ARGS: dict[str, dict[str, Any]] = {
    # Spec §5.1, reconstruction of the paper's configuration: C 48, 4 + 4 blocks, 8 text heads.
    "paper": dict(dim=48, encoder_blocks=4, decoder_blocks=4, heads=1, text_heads=8, seg_embed_dim=64),
    "small": dict(dim=32, encoder_blocks=2, decoder_blocks=2, heads=1, text_heads=4, seg_embed_dim=48),
    "tiny": dict(dim=16, encoder_blocks=1, decoder_blocks=1, heads=1, text_heads=2, seg_embed_dim=32),
    # Micro model for tests only: narrow tokens so tests need no real text encoder.
    "test": dict(dim=8, encoder_blocks=1, decoder_blocks=1, heads=1, text_heads=2, text_dim=16, text_len=6,
                 ffn_expansion=2.0, seg_embed_dim=8),
}


def _create_tesg(preset: str, **kwargs: Any) -> TeSG:
    if preset not in PRESET_ARGS:
        raise ValueError(f"Unknown TeSG preset '{preset}'; expected one of {', '.join(PRESET_ARGS)}")
    return TeSG(preset=preset, **{**PRESET_ARGS[preset], **kwargs})


@register_model(presets=PRESET_ARGS)
def tesg(preset: str = "paper", **kwargs: Any) -> TeSG:
    """TeSG (reconstruction; paper preset: C 48, 4 encoder + 4 decoder blocks, d_t 1024)."""
    return _create_tesg(preset, **kwargs)


@register_model(presets=PRESET_ARGS)
def test_tesg(preset: str = "test", **kwargs: Any) -> TeSG:
    """Micro TeSG for CPU tests of every code path."""
    return _create_tesg(preset, **kwargs)
