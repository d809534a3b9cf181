"""The UP-Fusion network, its presets and registration.

Paper: Li, Li, Jiang, "Text-Guided Channel Perturbation and Pre-Trained Knowledge Integration for
Unified Multi-Modality Image Fusion" (AAAI 2026, arXiv 2511.12432). Reference code:
github.com/ixilai/UP-Fusion (``model/framework.py`` at cde6673, read to understand the function;
nothing copied). Specification: shared/specs/UPFUSION_TESG.md §1, §5.

Faithful means the released code's function (spec §5.2): visible luminance Y (BT.601) and the
thermal image are embedded (3×3 conv each), averaged, pruned by SCPM, split in two halves by a
1×1 conv and modulated by GAM with each modality's own embedding; two Restormer encoders (own
blocks, *shared* down-samplers) give four levels per modality; four TCPMs fuse each level; one
decoder with a refinement stage predicts the fused luminance (3×3 conv, no activation, no input
residual), clamped to [0, 1] as Test.py does. The released dead third encoder (``*_gt``) is not
built; its tensors are dropped by the checkpoint conversion.

Our additions, outside the released function:

* colour: the fused Y is recombined with the visible image's Cb/Cr (BT.601), as MAFS does; the
  released Test.py writes grey;
* our segmentation head (the shared SegFormer head) on the refinement output and the two coarser
  decoder levels, so the node publishes labels; ``num_classes=0`` removes it;
* scores of every hard selection (SCPM, TCPM SE, top-m attention, π) are computed in fp32, also
  under autocast (spec §1.11); in fp32 this is the released computation;
* π is stored (``tcpm.*.text_permutation``) with the embedding (``text_embedding``).

Switches, all off in ``paper`` (deviations from the released code when on):

* ``semantic_eval_mode``: keep the ConvNeXt in eval mode while training (the release trains it
  with torchvision's stochastic depth active; features are then random during training).
  ``small``, ``tiny`` and ``test`` turn it on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_gray, rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.layers.restormer import Downsample, TransformerBlock, Upsample
from ivf_perception.models.layers.segformer_head import SegFormerHead
from ivf_perception.models.registry import register_model
from ivf_perception.models.upfusion.gam import GAM
from ivf_perception.models.upfusion.scpm import SCPM
from ivf_perception.models.upfusion.selection import recorded_margins
from ivf_perception.models.upfusion.semantic import build_semantic_backbone
from ivf_perception.models.upfusion.tcpm import TCPM, TEXT_DIM
from ivf_perception.models.upfusion.text import (
    check_text_embedding,
    load_text_embedding,
    prompt_embedding,
)

__all__ = ["UPFusion", "UPFusionFeatures", "PRESET_ARGS", "upfusion", "test_upfusion"]

LEVELS = 4


@dataclass
class UPFusionFeatures:
    """What ``forward_features`` hands to ``forward_head``.

    Attributes:
        refined: (B, 2·dim, H, W) refinement output, input of the luminance conv.
        decoder: decoder features for the segmentation head, finest first: the refinement
            output, decoder level 2 (H/2) and level 3 (H/4).
        selections: the channel indices every hard selection chose (``scpm``, ``tcpm1`` ..
            ``tcpm4``), so backends can be compared on them before comparing images (a
            near-tie resolved differently changes the output discontinuously, spec §1.11).
    """

    refined: torch.Tensor
    decoder: list[torch.Tensor]
    selections: dict[str, torch.Tensor]


def _stack(n: int, dim: int, heads: int, ffn: float, bias: bool, norm: str, dd: dict[str, Any]) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, ffn, bias, norm, **dd) for _ in range(n)))


class UPFusion(FusionSegModel):
    """UP-Fusion with our colour recombination and segmentation head (see the module docstring).

    Args:
        num_classes: segmentation classes; 0 builds the fusion-only network.
        dim: width of level 1 (levels are dim, 2·dim, 4·dim, 8·dim).
        num_blocks: Restormer blocks per encoder level (decoder levels 3, 2, 1 reuse
            ``num_blocks[2], [1], [0]``).
        num_refinement_blocks: blocks of the refinement stage.
        heads: attention heads per level.
        ffn_expansion: GDFN expansion.
        bias: bias of the Restormer convolutions.
        norm_type: Restormer LayerNorm (``WithBias`` / ``BiasFree``).
        semantic_backbone: SCPM's torchvision ConvNeXt (``convnext_base``, ``convnext_tiny``, ``test``).
        semantic_weights: its ImageNet state dict file (torchvision's), or None (random; trained
            weights carry the tensors).
        semantic_eval_mode: our switch, see the module docstring.
        text_embedding: the CLIP prompt embedding (a (512,) tensor or a file); sets π.
        clip_weights: open_clip ViT-B-32-quickgelu checkpoint file (or ``"random"``) to compute
            the embedding from, when ``text_embedding`` is not given.
        scpm_keep_ratio, scpm_reduction, tcpm_keep_ratio, topm_ratio: the selection ratios.
        seg_embed_dim: width of our segmentation head.
        preset: the preset name recorded in the weight sidecar.
        device, dtype: where to create parameters.

    Without a text embedding the buffer is zero and π is the order of ``text_fc``'s bias (see
    :meth:`has_text_embedding`); training recipes provide one.
    """

    variant = "upfusion"
    # Fixed-size ONNX only: with symbolic H×W the exported SCPM resize to 224² gives other values
    # than PyTorch's and can flip a top-k channel selection (fused image off by 0.019 at 32×48).
    _dynamic_onnx = False
    input_multiple = 8
    text_embedding: torch.Tensor

    def __init__(
        self,
        num_classes: int = 9,
        dim: int = 48,
        num_blocks: tuple[int, ...] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: tuple[int, ...] = (1, 2, 4, 8),
        ffn_expansion: float = 2.66,
        bias: bool = False,
        norm_type: str = "WithBias",
        semantic_backbone: str = "convnext_base",
        semantic_weights: str | os.PathLike[str] | None = None,
        semantic_eval_mode: bool = False,
        text_embedding: torch.Tensor | str | os.PathLike[str] | None = None,
        clip_weights: str | os.PathLike[str] | None = None,
        scpm_keep_ratio: float = 0.7,
        scpm_reduction: int = 8,
        tcpm_keep_ratio: float = 0.5,
        topm_ratio: float = 0.9,
        seg_embed_dim: int = 64,
        preset: str = "custom",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != LEVELS or len(heads) != LEVELS:
            raise ValueError(f"num_blocks and heads need {LEVELS} entries, got {tuple(num_blocks)} and {tuple(heads)}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        dd = factory_kwargs(device, dtype)
        self.num_classes = int(num_classes)
        self.preset = preset
        self._args = dict(dim=dim, num_blocks=list(num_blocks), num_refinement_blocks=num_refinement_blocks,
                          heads=list(heads), ffn_expansion=ffn_expansion, bias=bias, norm_type=norm_type,
                          semantic_backbone=semantic_backbone, semantic_eval_mode=semantic_eval_mode,
                          scpm_keep_ratio=scpm_keep_ratio, scpm_reduction=scpm_reduction,
                          tcpm_keep_ratio=tcpm_keep_ratio, topm_ratio=topm_ratio, seg_embed_dim=seg_embed_dim)
        widths = [dim * 2 ** i for i in range(LEVELS)]
        blk: dict[str, Any] = dict(ffn=ffn_expansion, bias=bias, norm=norm_type, dd=dd)

        self.embed_vi = nn.Conv2d(1, dim, 3, padding=1, bias=False, **dd)
        self.embed_ir = nn.Conv2d(1, dim, 3, padding=1, bias=False, **dd)
        tower, tower_dim = build_semantic_backbone(semantic_backbone, semantic_weights, **dd)
        self.scpm = SCPM(dim, tower, tower_dim, scpm_reduction, scpm_keep_ratio,
                         backbone_eval_mode=semantic_eval_mode, **dd)
        self.split_conv = nn.Conv2d(dim, 2 * dim, 1, **dd)
        self.gam_vi = GAM(dim, **dd)
        self.gam_ir = GAM(dim, **dd)
        self.encoder_vi = nn.ModuleList(_stack(num_blocks[i], widths[i], heads[i], **blk) for i in range(LEVELS))
        self.encoder_ir = nn.ModuleList(_stack(num_blocks[i], widths[i], heads[i], **blk) for i in range(LEVELS))
        self.down = nn.ModuleList(Downsample(widths[i], **dd) for i in range(LEVELS - 1))  # shared by both
        self.tcpm = nn.ModuleList(
            TCPM(widths[i], heads[i], ffn_expansion, bias, norm_type, tcpm_keep_ratio, topm_ratio, **dd)
            for i in range(LEVELS)
        )
        # Decoder, indexed by the level it produces: up[i] brings level i+1 to level i.
        self.up = nn.ModuleList(Upsample(widths[i + 1], **dd) for i in range(LEVELS - 1))
        self.reduce = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1, bias=bias, **dd) for i in (1, 2))
        self.decoder = nn.ModuleList([
            _stack(num_blocks[0], widths[1], heads[0], **blk),  # level 1 keeps 2·dim (no reduction)
            _stack(num_blocks[1], widths[1], heads[1], **blk),
            _stack(num_blocks[2], widths[2], heads[2], **blk),
        ])
        self.refinement = _stack(num_refinement_blocks, widths[1], heads[0], **blk)
        self.output = nn.Conv2d(widths[1], 1, 3, padding=1, bias=bias, **dd)
        self.register_buffer("text_embedding", torch.zeros(TEXT_DIM, **dd))
        seg_dims = [widths[1], widths[1], widths[2]]
        self.seg_head = SegFormerHead(seg_dims, num_classes, seg_embed_dim, **dd) if num_classes > 0 else None
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** i, "module": m}
            for i, (c, m) in enumerate(zip(seg_dims, ("refinement", "decoder.1", "decoder.2")))
        ]
        if text_embedding is not None:
            self.set_text_embedding(text_embedding)
        elif clip_weights is not None:
            self.set_text_embedding(prompt_embedding(clip_weights))
        elif not self.text_embedding.is_meta:
            self.refresh_permutations()

    # ------------------------------------------------------------------ text

    def has_text_embedding(self) -> bool:
        """Whether a prompt embedding was set (the buffer starts at zero)."""
        return bool(self.text_embedding.abs().sum() > 0)

    def set_text_embedding(self, text: torch.Tensor | str | os.PathLike[str]) -> None:
        """Store the CLIP prompt embedding and the permutation every TCPM derives from it.

        Raises:
            TextFeaturesError: wrong shape, non-finite values, unreadable file.
        """
        if not isinstance(text, torch.Tensor):
            text = load_text_embedding(Path(text))
        text = check_text_embedding(text, "text_embedding")
        with torch.no_grad():
            self.text_embedding.copy_(text.to(self.text_embedding))
        self.refresh_permutations()

    def refresh_permutations(self) -> None:
        """Recompute the stored π of every TCPM from the stored embedding (fp32)."""
        for module in self.tcpm:
            assert isinstance(module, TCPM)
            module.set_text(self.text_embedding)

    def permutations(self) -> list[torch.Tensor]:
        """The stored π of TCPM levels 1..4."""
        return [m.text_permutation for m in self.tcpm if isinstance(m, TCPM)]

    @torch.no_grad()
    def permutation_margins(self) -> list[float]:
        """Per TCPM, the smallest gap between consecutive sorted text scores u.

        A sensitivity check (spec §1.4): a gap near float precision means another precision or
        CLIP build could swap two channels of π, which is why π is stored, not recomputed.
        """
        margins = []
        for module in self.tcpm:
            assert isinstance(module, TCPM)
            u = torch.sort(module.text_scores(self.text_embedding), descending=True).values
            margins.append(float((u[:-1] - u[1:]).min()))
        return margins

    @torch.no_grad()
    def selection_margin(self, rgb: torch.Tensor, thermal: torch.Tensor) -> float:
        """The smallest score margin deciding any hard top-k of this input (SCPM, the four TCPM SE
        selections, the top-m attention masks), in PyTorch.

        Why: a margin below the ~1e-6 differences between backends means a near-tie can resolve
        differently there (spec §1.11); the ONNX export check reports it when it refuses a file.
        """
        with recorded_margins() as margins:
            self.forward_features(rgb, thermal)
        return min(margins)

    # ------------------------------------------------------------------ forward

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> UPFusionFeatures:
        e_vi = self.embed_vi(rgb_to_gray(rgb))
        e_ir = self.embed_ir(thermal)
        e_0 = (e_vi + e_ir) / 2
        selections = {"scpm": self.scpm.select(e_0)}
        f_vi, f_ir = self.split_conv(self.scpm.prune(e_0, selections["scpm"])).chunk(2, dim=1)
        f_vi, f_ir = self.gam_vi(f_vi, e_vi), self.gam_ir(f_ir, e_ir)
        skips = []
        for level in range(LEVELS):
            if level:
                f_vi, f_ir = self.down[level - 1](f_vi), self.down[level - 1](f_ir)
            f_vi, f_ir = self.encoder_vi[level](f_vi), self.encoder_ir[level](f_ir)
            skips.append((f_vi, f_ir))
        tcpm = [m for m in self.tcpm if isinstance(m, TCPM)]
        for level in range(LEVELS):
            selections[f"tcpm{level + 1}"] = tcpm[level].select(*skips[level])
        x = tcpm[LEVELS - 1].perturb(*skips[LEVELS - 1], selections[f"tcpm{LEVELS}"])
        decoded = []
        for level in reversed(range(LEVELS - 1)):
            fused = tcpm[level].perturb(*skips[level], selections[f"tcpm{level + 1}"])
            x = torch.cat((self.up[level](x), fused), dim=1)
            if level:
                x = self.reduce[level - 1](x)
            x = self.decoder[level](x)
            decoded.append(x)
        refined = self.refinement(x)
        return UPFusionFeatures(refined=refined, decoder=[refined, decoded[1], decoded[0]], selections=selections)

    def forward_head(self, features: UPFusionFeatures, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        raw_y = self.output(features.refined)
        ycbcr = rgb_to_ycbcr(rgb)
        fused = ycbcr_to_rgb(torch.cat((raw_y.clamp(0.0, 1.0), ycbcr[:, 1:]), dim=1)).clamp(0.0, 1.0)
        logits = None
        if self.seg_head is not None:
            logits = self.seg_head(features.decoder, out_size=tuple(rgb.shape[-2:]))
        aux: dict[str, Any] = {"fused_y": raw_y} if self.training else {}
        return FusionSegOutput(fused=fused, logits=logits, aux=aux)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model_args": dict(self._args)}


# --------------------------------------------------------------------------- builders

PRESET_ARGS: dict[str, dict[str, Any]] = {
    # The released configuration (spec §1.1): 49.3 M used parameters + 87.6 M frozen ConvNeXt-B.
    "paper": dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, heads=(1, 2, 4, 8),
                  ffn_expansion=2.66, semantic_backbone="convnext_base"),
    # CPU/embedded (spec §5.1): narrower, half the blocks, ConvNeXt-T.
    "small": dict(dim=32, num_blocks=(2, 3, 3, 4), num_refinement_blocks=2, heads=(1, 2, 4, 8),
                  ffn_expansion=2.66, semantic_backbone="convnext_tiny", semantic_eval_mode=True, seg_embed_dim=48),
    "tiny": dict(dim=16, num_blocks=(1, 1, 1, 2), num_refinement_blocks=1, heads=(1, 2, 4, 8),
                 ffn_expansion=2.0, semantic_backbone="convnext_tiny", semantic_eval_mode=True, seg_embed_dim=32),
    # Micro model for tests only: a two-stage torchvision ConvNeXt as the semantic tower.
    "test": dict(dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4),
                 ffn_expansion=2.0, semantic_backbone="test", semantic_eval_mode=True, seg_embed_dim=8),
}


def _create_upfusion(preset: str, **kwargs: Any) -> UPFusion:
    if preset not in PRESET_ARGS:
        raise ValueError(f"Unknown UP-Fusion preset '{preset}'; expected one of {', '.join(PRESET_ARGS)}")
    return UPFusion(preset=preset, **{**PRESET_ARGS[preset], **kwargs})


@register_model(presets=PRESET_ARGS)
def upfusion(preset: str = "paper", **kwargs: Any) -> UPFusion:
    """UP-Fusion (paper preset: dim 48, blocks 4/6/6/8, 4 refinement blocks, ConvNeXt-B SCPM)."""
    return _create_upfusion(preset, **kwargs)


@register_model(presets=PRESET_ARGS)
def test_upfusion(preset: str = "test", **kwargs: Any) -> UPFusion:
    """Micro UP-Fusion for CPU tests of every code path."""
    return _create_upfusion(preset, **kwargs)

