"""CMFS: CLIP-guided VMamba fusion and segmentation, resolution-agnostic and batchable.

Paper: Su et al., "CMFS: CLIP-Guided Modality Interaction for Mitigating Noise in Multi-Modal
Image Fusion and Segmentation", IJCAI 2025. Reference code: github.com/SuGuilin/IJCAI2025-CMFS
(read to understand the architecture; nothing copied). No published weights are used.

Per encoder stage i (DESIGN §5), for RGB and thermal branches of VMamba-T:

1. VSS blocks of each branch;
2. MIA (:mod:`.mia`): BiMamba per modality, then MMFI with the CLIP region map; its outputs are
   downsampled into the next stage;
3. FSC (:mod:`.fsc`, stages 0–1) refines each modality with a residual;
4. MMFE (:mod:`.mmfe`) fuses the two modalities into the stage's semantic feature.

A SegFormer MLP decoder (the shared :class:`~ivf_perception.models.layers.SegFormerHead`, with
an SS2D mixer) segments from the four semantic features; the fusion head (:mod:`.heads`, Sobel
gradient residual dense block) produces the fused RGB from the per-stage, per-modality
"vision" features and the inputs.

Fixed defects of the public code: any input size whose sides are multiples of 32 (the engine
pads), any batch size in training and evaluation, the local-window scan's permutation undone,
and no compiled extension needed to import or run (the CUDA scan is used when present).

The ``paper`` preset runs the MoE blocks' Mamba bidirectionally, as the ``mamba_ssm`` package
the public code ships does (``moe_mamba_bidirectional``; 135.16 M parameters without CLIP);
``docs/models/cmfs.md`` compares paper, public code and ours.

Ablations (the paper's Models I–V) are constructor switches; ``ablation="I"`` … ``"V"`` sets
them: I no BiMamba, II no region partition + CLIP map, III no FSC, IV MMFE replaced by a 1×1
conv, V no fusion head (the fused output is then the pixel average of the visible luminance and
the thermal image with the visible colour, so every engine output stays defined).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ivf_perception.io.tensor_files import TensorFileNotFoundError, read_tensor_file
from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.cmfs.backbone import CheckpointReport, VMambaBranch, map_vmamba_checkpoint
from ivf_perception.models.cmfs.fsc import FrequencySpatialCollaboration
from ivf_perception.models.cmfs.heads import SobelFusionHead
from ivf_perception.models.cmfs.mia import MIA
from ivf_perception.models.cmfs.mmfe import MultiModalFeatureEnhancement
from ivf_perception.models.cmfs.text_features import TEXT_DIM, load_text_features
from ivf_perception.models.layers.color import rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.layers.factories import factory_kwargs
from ivf_perception.models.layers.segformer_head import SegFormerHead, remap_legacy_segformer_keys
from ivf_perception.models.registry import register_model

__all__ = ["CMFS", "CMFSFeatures", "ABLATIONS", "LEGACY_ARGS", "PRESET_ARGS", "cmfs", "test_cmfs",
           "checkpoint_filter_fn"]

_log = logging.getLogger(__name__)

ABLATIONS: dict[str, dict[str, bool]] = {
    "I": {"use_bimamba": False},
    "II": {"use_clip_regions": False},
    "III": {"use_fsc": False},
    "IV": {"use_mmfe": False},
    "V": {"use_fusion_head": False},
}
"""The paper's ablation Models I–V as constructor switches."""


class ConcatConvFusion(nn.Module):
    """Ablation IV's stand-in for MMFE: a 1×1 conv over the concatenated modalities.

    Shape:
        x_rgb, x_thermal: (B, C, H, W)  ->  ((B, C, H, W), zero balance loss)
    """

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2 * dim, dim, 1, device=device, dtype=dtype)

    def forward(self, x_rgb: torch.Tensor, x_thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(torch.cat((x_rgb, x_thermal), dim=1)), x_rgb.new_zeros(())


@dataclass
class CMFSFeatures:
    """What ``forward_features`` hands to ``forward_head`` (all channels-first, finest first)."""

    vision_rgb: list[torch.Tensor]
    vision_thermal: list[torch.Tensor]
    semantic: list[torch.Tensor]
    balance_loss: torch.Tensor


class CMFS(FusionSegModel):
    """CMFS (see the module docstring).

    Args:
        num_classes: segmentation classes (>= 2; class 0 is the unlabelled/background class).
        dims: channels per encoder stage.
        depths: VSS blocks per encoder stage.
        d_state: SSM state size of the VSS blocks (1 in VMamba-T 0230s).
        ssm_ratio: SS2D inner width ratio of the VSS blocks.
        mlp_ratio: MLP ratio of the VSS blocks.
        drop_path_rate: encoder stochastic depth.
        thermal_in_chans: 1 (a one-channel stem) or 3 (thermal repeated to three channels, as the
            public code does); an ImageNet stem maps onto either.
        regions: region partition N per stage (paper: 5, 5, 1, 1).
        region_pools: per-region resampling grid of the region map's projection, per stage.
        num_prompts: rows of the CLIP text features; default ``num_classes - 1`` (every class but 0).
        text_features: (num_prompts, 512) CLIP text features, or a feature file path; ``None``
            leaves zeros to be set with :meth:`set_text_features` or loaded with the weights.
        bimamba_d_state: state size of MIA's bidirectional Mamba.
        bimamba_expand: inner width ratio of MIA's bidirectional Mamba.
        fsc_stages: how many leading stages get FSC (paper: 2).
        fsc_d_states: FSC SSM state size per FSC stage (public code: 8, 16).
        fsc_ssm_ratio: FSC SSM inner width ratio (public code: 4.0).
        fsc_window: local-window size of FSC's wavelet-branch scan.
        moe_ranks: ranks of the low-rank experts.
        moe_blocks: MoE + strip-conv blocks per MMFE.
        moe_mamba_d_state: state size of the Mamba inside each MoE block (64 in the public
            code); ``None`` removes it.
        moe_mamba_bidirectional: that Mamba scans both ways, as the ``mamba_ssm`` package the
            public code ships does (``paper``: 135.16 M parameters), or causally (our earlier
            reading of its source, 133.62 M; kept for ``small`` and for older weights).
        strip_kernel: length of MMFE's strip convolutions.
        seg_embed_dim: SegFormer decoder width (512 in the paper).
        seg_ss2d_d_state: state size of the SS2D in the SegFormer decoder (public code: 16);
            ``None`` removes it.
        fusion_embed_dim: width of the fusion head (16 in the public code).
        use_bimamba, use_clip_regions, use_fsc, use_mmfe, use_fusion_head: ablation switches.
        scan_backend: selective-scan backend.
        preset: preset name recorded in the weight sidecar.
        device, dtype: where to create parameters.
    """

    variant = "cmfs"
    # Fixed-size ONNX only: its VSS blocks use the selective-scan export path that pins S4Fusion's
    # sizes (torch.export specialises H×W through the scan's chunk padding and reshape guards;
    # see S4Fusion._dynamic_onnx). Not traced separately for CMFS.
    _dynamic_onnx = False
    text_features: torch.Tensor  # buffer (num_prompts, TEXT_DIM), registered in __init__

    def __init__(
        self,
        num_classes: int = 9,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 8, 2),
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        thermal_in_chans: int = 1,
        regions: Sequence[int] = (5, 5, 1, 1),
        region_pools: Sequence[Sequence[int]] = ((24, 32), (12, 16), (30, 40), (15, 20)),
        num_prompts: int | None = None,
        text_features: torch.Tensor | str | os.PathLike[str] | None = None,
        bimamba_d_state: int = 16,
        bimamba_expand: float = 2.0,
        fsc_stages: int = 2,
        fsc_d_states: Sequence[int] = (8, 16),
        fsc_ssm_ratio: float = 4.0,
        fsc_window: int = 4,
        moe_ranks: Sequence[int] = (2, 4, 8),
        moe_blocks: int = 2,
        moe_mamba_d_state: int | None = 64,
        moe_mamba_bidirectional: bool = False,
        strip_kernel: int = 11,
        seg_embed_dim: int = 512,
        seg_ss2d_d_state: int | None = 16,
        fusion_embed_dim: int = 16,
        use_bimamba: bool = True,
        use_clip_regions: bool = True,
        use_fsc: bool = True,
        use_mmfe: bool = True,
        use_fusion_head: bool = True,
        scan_backend: str = "auto",
        preset: str = "custom",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        stages = len(dims)
        if not (len(depths) == len(regions) == len(region_pools) == stages):
            raise ValueError(f"dims, depths, regions and region_pools need one entry per stage, got "
                             f"{len(dims)}, {len(depths)}, {len(regions)}, {len(region_pools)}")
        if any(len(pool) != 2 for pool in region_pools):
            raise ValueError(f"each region_pools entry is an (height, width) grid, got {list(region_pools)}")
        if num_classes < 2:
            raise ValueError("CMFS segments and guides its regions by class: num_classes must be >= 2, "
                             f"got {num_classes}")
        if thermal_in_chans not in (1, 3):
            raise ValueError(f"thermal_in_chans must be 1 or 3, got {thermal_in_chans}")
        if not 0 <= fsc_stages <= stages or len(fsc_d_states) < fsc_stages:
            raise ValueError(f"fsc_stages ({fsc_stages}) must be in [0, {stages}] with one fsc_d_states entry each "
                             f"(got {list(fsc_d_states)})")
        if any(d % 2 for d in dims):
            raise ValueError(f"dims must be even (channel shuffle in groups of 2), got {list(dims)}")
        dd = factory_kwargs(device, dtype)
        self.num_classes = int(num_classes)
        self.preset = preset
        self.input_multiple = 4 * 2 ** (stages - 1)
        self.thermal_in_chans = thermal_in_chans
        self.use_fusion_head = use_fusion_head
        self.num_prompts = int(num_prompts if num_prompts is not None else num_classes - 1)
        fsc_stages = fsc_stages if use_fsc else 0
        self._args: dict[str, Any] = dict(
            dims=list(dims), depths=list(depths), d_state=d_state, ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio,
            thermal_in_chans=thermal_in_chans, regions=list(regions), region_pools=[list(p) for p in region_pools],
            num_prompts=self.num_prompts, bimamba_d_state=bimamba_d_state, bimamba_expand=bimamba_expand,
            fsc_stages=fsc_stages, fsc_d_states=list(fsc_d_states), fsc_ssm_ratio=fsc_ssm_ratio,
            fsc_window=fsc_window, moe_ranks=list(moe_ranks), moe_blocks=moe_blocks,
            moe_mamba_d_state=moe_mamba_d_state, moe_mamba_bidirectional=moe_mamba_bidirectional,
            strip_kernel=strip_kernel, seg_embed_dim=seg_embed_dim,
            seg_ss2d_d_state=seg_ss2d_d_state, fusion_embed_dim=fusion_embed_dim, use_bimamba=use_bimamba,
            use_clip_regions=use_clip_regions, use_fsc=use_fsc, use_mmfe=use_mmfe, use_fusion_head=use_fusion_head,
        )

        self.encoder_rgb, self.encoder_thermal = (
            VMambaBranch(in_chans, dims=dims, depths=depths, drop_path_rate=drop_path_rate, d_state=d_state,
                         ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio, scan_backend=scan_backend, **dd)
            for in_chans in (3, thermal_in_chans))
        self.register_buffer("text_features", torch.zeros(self.num_prompts, TEXT_DIM, **dd))
        self.mia = nn.ModuleList(
            MIA(dims[i], regions[i] if use_clip_regions else 1, (region_pools[i][0], region_pools[i][1]),
                self.num_prompts, TEXT_DIM,
                bimamba_d_state=bimamba_d_state, bimamba_expand=bimamba_expand, use_bimamba=use_bimamba,
                use_text_gate=use_clip_regions, scan_backend=scan_backend, **dd)
            for i in range(stages)
        )
        self.fsc_rgb = nn.ModuleList(
            FrequencySpatialCollaboration(dims[i], d_state=fsc_d_states[i], ssm_ratio=fsc_ssm_ratio,
                                          window_size=fsc_window, scan_backend=scan_backend, **dd)
            for i in range(fsc_stages)
        )
        self.fsc_thermal = nn.ModuleList(
            FrequencySpatialCollaboration(dims[i], d_state=fsc_d_states[i], ssm_ratio=fsc_ssm_ratio,
                                          window_size=fsc_window, scan_backend=scan_backend, **dd)
            for i in range(fsc_stages)
        )
        self.mmfe = nn.ModuleList(
            MultiModalFeatureEnhancement(dims[i], num_blocks=moe_blocks, ranks=tuple(moe_ranks),
                                         strip_kernel=strip_kernel, mamba_d_state=moe_mamba_d_state,
                                         mamba_bidirectional=moe_mamba_bidirectional,
                                         scan_backend=scan_backend, **dd) if use_mmfe
            else ConcatConvFusion(dims[i], **dd)
            for i in range(stages)
        )
        self.outnorm_rgb = nn.ModuleList(nn.LayerNorm(d, **dd) for d in dims)
        self.outnorm_thermal = nn.ModuleList(nn.LayerNorm(d, **dd) for d in dims)
        # The public code's fuse convolution has a bias (redundant before BN); kept.
        self.seg_head = SegFormerHead(list(dims), num_classes, embed_dim=seg_embed_dim, fuse_bias=True,
                                      ss2d_d_state=seg_ss2d_d_state, scan_backend=scan_backend, **dd)
        self.fusion_head = (SobelFusionHead(list(dims), embed_dim=fusion_embed_dim, **dd)
                            if use_fusion_head else None)
        self.feature_info = [
            {"num_chs": dims[i], "reduction": 4 * 2 ** i, "module": f"mmfe.{i}"} for i in range(stages)
        ]
        if text_features is not None:
            self.set_text_features(text_features)

    # ---- text features -----------------------------------------------------------------------

    @property
    def has_text_features(self) -> bool:
        """Whether real features were set (an untrained model holds zeros: no CLIP guidance)."""
        return bool(self.text_features.abs().sum() > 0)

    def set_text_features(self, features: torch.Tensor | str | os.PathLike[str]) -> None:
        """Store the CLIP text features (a tensor, or a file from ``ivf-perception clip-text-features``).

        Raises:
            ValueError: features of the wrong shape for this model's prompts.
        """
        if not isinstance(features, torch.Tensor):
            features = load_text_features(Path(features))
        if tuple(features.shape) != (self.num_prompts, TEXT_DIM):
            raise ValueError(f"CMFS needs text features of shape ({self.num_prompts}, {TEXT_DIM}) (one row per class "
                             f"but class 0), got {tuple(features.shape)}")
        with torch.no_grad():
            self.text_features.copy_(features.to(self.text_features))

    # ---- ImageNet encoder weights ------------------------------------------------------------

    def load_encoder_checkpoint(self, path: str | os.PathLike[str]) -> CheckpointReport:
        """Initialise both encoder branches from an ImageNet VMamba-T checkpoint file.

        The file is read without unpickling code (:func:`~ivf_perception.io.tensor_files.read_tensor_file`);
        keys are mapped by name (see :func:`map_vmamba_checkpoint`).

        Raises:
            TensorFileNotFoundError: the file does not exist (a ``FileNotFoundError``).
            TensorFileError: the file cannot be read as a state dict (a ``ValueError``).
            ValueError: nothing in the file fits the encoders.
        """
        path = Path(path)
        try:
            state = read_tensor_file(path, what="VMamba checkpoint")
        except TensorFileNotFoundError as exc:
            raise TensorFileNotFoundError(
                f"VMamba-T checkpoint not found: {path}. Download vssm1_tiny_0230s_ckpt_epoch_264.pth from the "
                "VMamba releases (github.com/MzeroMiko/VMamba) on a machine with internet access, "
                "or train from scratch."
            ) from exc
        mapped, report = map_vmamba_checkpoint(state, {"encoder_rgb": self.encoder_rgb,
                                                       "encoder_thermal": self.encoder_thermal})
        if not mapped:
            raise ValueError(f"nothing in {path} fits the CMFS encoders: {report.summary()}")
        self.load_state_dict(mapped, strict=False)
        _log.info("VMamba encoder weights from %s: %s", path, report.summary())
        return report

    # ---- forward -----------------------------------------------------------------------------

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> CMFSFeatures:
        x_rgb = self.encoder_rgb.patch_embed(rgb)
        x_th = self.encoder_thermal.patch_embed(thermal.expand(-1, self.thermal_in_chans, -1, -1))
        vision_rgb: list[torch.Tensor] = []
        vision_th: list[torch.Tensor] = []
        semantic: list[torch.Tensor] = []
        balance = rgb.new_zeros(())
        for i, (stage_rgb, stage_th) in enumerate(zip(self.encoder_rgb.stages(), self.encoder_thermal.stages())):
            o_rgb = stage_rgb.blocks(x_rgb).permute(0, 3, 1, 2)
            o_th = stage_th.blocks(x_th).permute(0, 3, 1, 2)
            o_rgb, o_th = self.mia[i](o_rgb, o_th, self.text_features)
            x_rgb = stage_rgb.downsample(o_rgb.permute(0, 2, 3, 1))
            x_th = stage_th.downsample(o_th.permute(0, 2, 3, 1))
            if i < len(self.fsc_rgb):
                o_rgb = o_rgb + self.fsc_rgb[i](o_rgb)
                o_th = o_th + self.fsc_thermal[i](o_th)
            fused, stage_balance = self.mmfe[i](o_rgb, o_th)
            balance = balance + stage_balance
            semantic.append(fused)
            vision_rgb.append(self.outnorm_rgb[i](o_rgb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            vision_th.append(self.outnorm_thermal[i](o_th.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return CMFSFeatures(vision_rgb, vision_th, semantic, balance / len(semantic))

    def forward_head(self, features: CMFSFeatures, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        logits = self.seg_head(features.semantic, out_size=tuple(rgb.shape[-2:]))
        if self.fusion_head is not None:
            fused = self.fusion_head(features.vision_rgb, features.vision_thermal, rgb, thermal)
        else:
            ycbcr = rgb_to_ycbcr(rgb)
            y = 0.5 * (ycbcr[:, :1] + thermal)
            fused = ycbcr_to_rgb(torch.cat((y, ycbcr[:, 1:]), dim=1)).clamp(0.0, 1.0)
        aux: dict[str, Any] = {"moe_balance_loss": features.balance_loss} if self.training else {}
        return FusionSegOutput(fused=fused, logits=logits, aux=aux)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model_args": dict(self._args)}


# --------------------------------------------------------------------------- builders


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CMFS) -> dict[str, torch.Tensor]:
    """Adapt a CMFS state dict to ``model``: map a segmentation head saved with SegFormer's own
    parameter names (before the head was shared with S4Fusion) onto the shared head, and, for
    another class table, drop the classifier and the text features (and the region-map convs
    sized by them), which are then trained/set anew."""
    state_dict = remap_legacy_segformer_keys(state_dict, "seg_head.")
    own = model.state_dict()
    class_sized = ("seg_head.classifier.", "text_features")
    return {
        k: v for k, v in state_dict.items()
        if not (k in own and own[k].shape != v.shape
                and (k.startswith(class_sized) or ".region_gate.conv1." in k))
    }


def _create_cmfs(preset: str, ablation: str | None = None, encoder_weights: str | None = None,
                 **kwargs: Any) -> CMFS:
    if preset not in PRESET_ARGS:
        raise ValueError(f"Unknown CMFS preset '{preset}'; expected one of {', '.join(PRESET_ARGS)}")
    args = {**PRESET_ARGS[preset]}
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ValueError(f"Unknown CMFS ablation '{ablation}'; expected one of {', '.join(ABLATIONS)}")
        args.update(ABLATIONS[ablation])
    args.update(kwargs)
    model = CMFS(preset=preset, **args)
    if ablation is not None:
        model._args["ablation"] = ablation
    if encoder_weights:
        model.load_encoder_checkpoint(encoder_weights)
    return model


PRESET_ARGS: dict[str, dict[str, Any]] = {
    # The published configuration (DESIGN §5): VMamba-T 0230s branches, region pools equal to
    # the paper's region sizes at 480×640 (so the projection there is the paper's exactly).
    "paper": dict(dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), d_state=1, ssm_ratio=1.0, mlp_ratio=4.0,
                  drop_path_rate=0.2, regions=(5, 5, 1, 1), region_pools=((24, 32), (12, 16), (30, 40), (15, 20)),
                  bimamba_d_state=16, bimamba_expand=2.0, fsc_d_states=(8, 16), fsc_ssm_ratio=4.0,
                  moe_mamba_d_state=64, moe_mamba_bidirectional=True, seg_embed_dim=512, seg_ss2d_d_state=16,
                  fusion_embed_dim=16),
    # CPU/embedded: a third of the widths, one block per stage (two at stage 2), lighter
    # BiMamba/FSC/MoE Mamba, no SS2D in the decoder and a half-width fusion head (its dense
    # block runs at full resolution: 43 % of the GMACs at width 16); every paper module kept.
    "small": dict(dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0, mlp_ratio=2.0,
                  drop_path_rate=0.1, regions=(5, 5, 1, 1), region_pools=((6, 8), (6, 8), (6, 8), (6, 8)),
                  bimamba_d_state=8, bimamba_expand=1.0, fsc_d_states=(4, 8), fsc_ssm_ratio=1.0,
                  moe_mamba_d_state=8, moe_mamba_bidirectional=False, seg_embed_dim=128, seg_ss2d_d_state=None,
                  fusion_embed_dim=8),
    # Micro model for tests only (timm's test_* habit); causal MoE Mamba, as the ONNX export
    # tests were timed with (tests that need the bidirectional one ask for it).
    "test": dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), d_state=1, ssm_ratio=1.0, mlp_ratio=1.0,
                 drop_path_rate=0.0, regions=(5, 5, 1, 1), region_pools=((2, 2), (2, 2), (2, 2), (2, 2)),
                 bimamba_d_state=2, bimamba_expand=1.0, fsc_d_states=(2, 2), fsc_ssm_ratio=1.0,
                 moe_mamba_d_state=2, moe_mamba_bidirectional=False, seg_embed_dim=16, seg_ss2d_d_state=2,
                 fusion_embed_dim=8),
}

LEGACY_ARGS: dict[str, dict[str, Any]] = {
    preset: {"moe_mamba_bidirectional": False} for preset in PRESET_ARGS
}
"""What weights saved before the MoE-Mamba switch were built with (a causal mixer in every
preset); see :func:`~ivf_perception.models.registry.with_legacy_args`."""


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def cmfs(preset: str = "paper", **kwargs: Any) -> CMFS:
    """CMFS (paper preset: VMamba-T branches 96–768, depths 2/2/8/2, MIA, FSC at stages 0–1, MMFE).

    Extra arguments: ``ablation`` ("I" … "V"), ``encoder_weights`` (an ImageNet VMamba-T
    checkpoint to initialise both branches) and any :class:`CMFS` argument.
    """
    return _create_cmfs(preset, **kwargs)


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def test_cmfs(preset: str = "test", **kwargs: Any) -> CMFS:
    """Micro CMFS for CPU tests of every code path."""
    return _create_cmfs(preset, **kwargs)
