"""The MAFS network: encoder + fuser, invertible fusion decoder, segmentation decoder, stage-I decoder.

See the package docstring for the paper and the differences from its public code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ivf_perception.models.base import FusionSegModel, FusionSegOutput
from ivf_perception.models.layers.color import rgb_to_ycbcr, ycbcr_to_rgb
from ivf_perception.models.layers.factories import DeviceLike, factory_kwargs
from ivf_perception.models.mafs.encoder import DualResNetEncoder, FusedFeatures, MAFSFuser
from ivf_perception.models.mafs.invertible import InvertibleFusionDecoder
from ivf_perception.models.mafs.reconstruction import MaskedReconstructionDecoder
from ivf_perception.models.mafs.seg_decoder import SegmentationDecoder
from ivf_perception.models.mafs.trunk import TrunkWeightsError, TrunkWeightsReport, load_trunk_weights

__all__ = ["MAFS", "LEGACY_ARGS", "PRESET_ARGS", "checkpoint_filter_fn"]


class MAFS(FusionSegModel):
    """MAFS fusion + segmentation network (see the package docstring).

    ``forward(rgb, thermal)`` is the stage II / inference path; :meth:`reconstruct` is the
    stage I (masked-autoencoder) path. Training extras in ``aux`` (train mode only):

    * ``fused_y``: (B, 1, H, W) fused luminance in [0, 1] (fusion losses compare luminance);
    * ``binary_logits``: (B, 1, H, W) foreground logit (weighted BCE);
    * ``boundary_logits``: (B, 1, H, W) class-boundary logit;
    * ``aux_logits``: list of 3 (B, K, H, W) logits, one per transformer-decoder stage.

    These are the keys ``ivf_training.mafs_losses.MAFSStage2Loss`` reads.

    Args:
        num_classes: segmentation classes; 0 builds a fusion-only model (``logits`` is None).
        rgb_trunk: timm ResNet name of the visible stream.
        thermal_trunk: timm ResNet name of the thermal stream (same widths as ``rgb_trunk``).
        trunk_weights: ImageNet weights of the visible trunk (``.safetensors``, or a PyTorch
            file read with ``weights_only=True``); also used for the thermal trunk unless
            ``thermal_trunk_weights`` is given. None: random initialisation.
        thermal_trunk_weights: ImageNet weights of the thermal trunk, when its depth differs.
        shallow_dim: fused width of the shallow levels, the fusion decoder and stage I decoder.
        deep_dim: fused width of the deep levels and of the segmentation decoder.
        dem_mlp_ratio: hidden width of the DEM descriptor MLPs, as a multiple of the channels.
        refine_layers: dense 3×3 layers on the full-resolution fused feature.
        inn_blocks: invertible blocks of the fusion decoder.
        num_heads: attention heads of the transformer decoder.
        ffn_ratio: feed-forward width of the transformer decoder, as a multiple of ``deep_dim``.
        aspp_rates: ASPP dilation rates.
        dem_mix, dem_conv: how each DEM hands the weighted modalities on and groups its 7×7
            gate convolution (:class:`~ivf_perception.models.mafs.encoder.DEM`).
        afm_units: 3×3 conv units per modality in the AFMs.
        inn_subnet: coupling subnets of the invertible decoder, ``"hin"`` (the public code's
            half-instance-norm blocks) or ``"plain"``.
        inn_aggregation: ``"public"`` or ``"all"`` (which tensors the invertible decoder's
            dense aggregation concatenates).
        aspp_form: ``"public"`` (residual ASPP, rates 1–4) or ``"deeplab"`` (DeepLab v3 with
            image pooling).
        preset: the preset name recorded in the weight sidecar.
        device, dtype: where to create parameters.
    """

    variant = "mafs"
    input_multiple = 32
    # Any size runs (every resize follows the actual map sizes); padding to 32 gives the exact
    # 2× pyramid the network is trained on, so the engine pads to ``input_multiple``.
    requires_divisible_input_shape = False
    STAGE_MODULES: dict[str, tuple[str, ...]] = {
        "reconstruction": ("encoder", "fuser", "recon_head"),
        "fusion_seg": ("encoder", "fuser", "fusion_head", "seg_head"),
    }
    """Top-level modules each training stage uses (and trains): stage I is ``reconstruction``,
    stage II (and inference) ``fusion_seg``."""

    def __init__(
        self,
        num_classes: int = 9,
        rgb_trunk: str = "resnet152",
        thermal_trunk: str = "resnet152",
        trunk_weights: str | Path | None = None,
        thermal_trunk_weights: str | Path | None = None,
        shallow_dim: int = 32,
        deep_dim: int = 64,
        dem_mlp_ratio: float = 2.0,
        refine_layers: int = 4,
        inn_blocks: int = 5,
        num_heads: int = 2,
        ffn_ratio: float = 1.0,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        dem_mix: str = "residual",
        dem_conv: str = "depthwise",
        afm_units: int = 2,
        inn_subnet: str = "plain",
        inn_aggregation: str = "all",
        aspp_form: str = "deeplab",
        preset: str = "custom",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if shallow_dim < 2 or shallow_dim % 2:
            raise ValueError(f"shallow_dim must be even (the invertible blocks split it in halves), got {shallow_dim}")
        dd = factory_kwargs(device, dtype)
        self.num_classes = int(num_classes)
        self.preset = preset
        self._args = dict(rgb_trunk=rgb_trunk, thermal_trunk=thermal_trunk, shallow_dim=shallow_dim,
                          deep_dim=deep_dim, dem_mlp_ratio=dem_mlp_ratio, refine_layers=refine_layers,
                          inn_blocks=inn_blocks, num_heads=num_heads, ffn_ratio=ffn_ratio,
                          aspp_rates=list(aspp_rates), dem_mix=dem_mix, dem_conv=dem_conv, afm_units=afm_units,
                          inn_subnet=inn_subnet, inn_aggregation=inn_aggregation, aspp_form=aspp_form)

        self.encoder = DualResNetEncoder(rgb_trunk, thermal_trunk, dem_mlp_ratio, dem_mix, dem_conv, **dd)
        self.fuser = MAFSFuser(self.encoder.level_chs, shallow_dim, deep_dim, refine_layers, afm_units, **dd)
        self.fusion_head = InvertibleFusionDecoder(shallow_dim, inn_blocks, subnet=inn_subnet,
                                                   aggregation=inn_aggregation, **dd)
        self.seg_head = (
            SegmentationDecoder(deep_dim, shallow_dim, num_classes, num_heads, ffn_ratio, tuple(aspp_rates),
                                aspp_form, **dd)
            if num_classes > 0 else None
        )
        self.recon_head = MaskedReconstructionDecoder(shallow_dim, deep_dim, **dd)
        self.feature_info = [
            {"num_chs": shallow_dim, "reduction": 1, "module": "fuser.refine"},
            {"num_chs": shallow_dim, "reduction": 2, "module": "fuser.phf_half"},
            *({"num_chs": deep_dim, "reduction": 2 ** (i + 2), "module": f"fuser.cam.{i}"} for i in range(4)),
        ]
        if trunk_weights is not None or thermal_trunk_weights is not None:
            self.load_trunk_weights(trunk_weights, thermal_trunk_weights)  # logs what it loaded

    def load_trunk_weights(self, rgb: str | Path | None,
                           thermal: str | Path | None = None) -> dict[str, TrunkWeightsReport]:
        """Load ImageNet weights into the trunks (``thermal`` defaults to ``rgb`` for equal trunks).

        Returns:
            One report per trunk loaded, keyed ``"rgb"`` / ``"thermal"``.

        Raises:
            TrunkWeightsError: a file is missing, corrupt, refused or does not fit its trunk, or
                the trunks differ in depth and no thermal file is given (a ResNet-34 file would
                otherwise half-fill a ResNet-18 with the wrong blocks).
        """
        names = (self.encoder.trunk_rgb.name, self.encoder.trunk_thermal.name)
        if thermal is None and rgb is not None and names[0] != names[1]:
            raise TrunkWeightsError(
                f"the trunks differ ({names[0]} visible, {names[1]} thermal): pass the {names[1]} weights "
                "as thermal_trunk_weights=..."
            )
        thermal = thermal if thermal is not None else rgb
        reports = {}
        if rgb is not None:
            reports["rgb"] = load_trunk_weights(self.encoder.trunk_rgb, rgb)
        if thermal is not None:
            reports["thermal"] = load_trunk_weights(self.encoder.trunk_thermal, thermal)
        return reports

    def forward_features(self, rgb: torch.Tensor, thermal: torch.Tensor) -> FusedFeatures:
        return self.fuser(*self.encoder(rgb, thermal))

    def forward_head(self, features: FusedFeatures, rgb: torch.Tensor, thermal: torch.Tensor) -> FusionSegOutput:
        fused_y = self.fusion_head(features.image)
        ycbcr = rgb_to_ycbcr(rgb)
        fused = ycbcr_to_rgb(torch.cat((fused_y, ycbcr[:, 1:]), dim=1)).clamp(0.0, 1.0)
        aux: dict[str, Any] = {"fused_y": fused_y} if self.training else {}
        logits = None
        if self.seg_head is not None:
            seg = self.seg_head(features.deep, features.half, tuple(rgb.shape[-2:]), with_aux=self.training)
            logits = seg.logits
            aux.update(seg.aux)
        return FusionSegOutput(fused=fused, logits=logits, aux=aux)

    def reconstruct(self, rgb: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage I: reconstruct both complete images from (masked) inputs.

        Args:
            rgb: (B, 3, H, W) in [0, 1], typically with patches masked out.
            thermal: (B, 1, H, W) in [0, 1], typically with patches masked out.

        Returns:
            ``(rgb_rec, thermal_rec)``: (B, 3, H, W) and (B, 1, H, W), both in [0, 1].
        """
        self.check_input(rgb, thermal)
        features = self.forward_features(rgb, thermal)
        return self.recon_head(features.image, features.deep)

    def config(self) -> dict[str, Any]:
        """Rebuild arguments; trunk weight paths are left out (the engine weights hold the trunks)."""
        return {**super().config(), "model_args": dict(self._args)}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MAFS) -> dict[str, torch.Tensor]:
    """Adapt a state dict to ``model``: drop class-count-dependent tensors that do not fit.

    This is how a stage I checkpoint, or weights trained for another class table, initialise a
    model: everything loads except the semantic classifiers, which are trained anew. Other
    mismatches are left for ``load_state_dict`` to report.
    """
    own = model.state_dict()
    class_dependent = ("seg_head.head.semantic.", "seg_head.stage_heads.")
    return {
        k: v for k, v in state_dict.items()
        if not (k.startswith(class_dependent) and k in own and own[k].shape != v.shape)
    }


def _create_mafs(preset: str, **kwargs: Any) -> MAFS:
    if preset not in PRESET_ARGS:
        raise ValueError(f"Unknown MAFS preset '{preset}'; expected one of {', '.join(PRESET_ARGS)}")
    return MAFS(preset=preset, **{**PRESET_ARGS[preset], **kwargs})


_PUBLIC_CODE = dict(dem_mix="public", dem_conv="pairs", afm_units=3, inn_subnet="hin", inn_aggregation="public",
                    aspp_form="public")
"""The public code's form of every module the fidelity audit found different (issue 15)."""

_OURS = dict(dem_mix="residual", dem_conv="depthwise", afm_units=2, inn_subnet="plain", inn_aggregation="all",
             aspp_form="deeplab")
"""Our earlier forms, kept as switches (the reasons are in each module's docstring)."""

PRESET_ARGS: dict[str, dict[str, Any]] = {
    # The published configuration: two ResNet-152 trunks, 32-channel shallow / 64-channel deep
    # fusion, five invertible blocks, 2-head transformer decoder (DESIGN §5), every module in the
    # public code's form (docs/models/mafs.md lists each).
    "paper": dict(rgb_trunk="resnet152", thermal_trunk="resnet152", shallow_dim=32, deep_dim=64,
                  dem_mlp_ratio=2.0, refine_layers=4, inn_blocks=5, num_heads=2, ffn_ratio=1.0,
                  aspp_rates=(1, 2, 3, 4), **_PUBLIC_CODE),
    # CPU/embedded: ResNet-34 for the texture-rich visible image, ResNet-18 for thermal; our
    # module forms, as these presets were built and measured.
    "small": dict(rgb_trunk="resnet34", thermal_trunk="resnet18", shallow_dim=16, deep_dim=48,
                  dem_mlp_ratio=1.0, refine_layers=2, inn_blocks=3, num_heads=2, ffn_ratio=1.0,
                  aspp_rates=(6, 12, 18), **_OURS),
    # The fastest usable configuration: two ResNet-18s, narrow decoders.
    "tiny": dict(rgb_trunk="resnet18", thermal_trunk="resnet18", shallow_dim=16, deep_dim=32,
                 dem_mlp_ratio=0.5, refine_layers=1, inn_blocks=2, num_heads=2, ffn_ratio=1.0,
                 aspp_rates=(6, 12, 18), **_OURS),
    # Micro model for tests only (timm's test_resnet trunks), in the paper's module forms.
    "test": dict(rgb_trunk="test_resnet", thermal_trunk="test_resnet", shallow_dim=8, deep_dim=16,
                 dem_mlp_ratio=0.5, refine_layers=1, inn_blocks=3, num_heads=2, ffn_ratio=1.0,
                 aspp_rates=(1, 2), **_PUBLIC_CODE),
}

LEGACY_ARGS: dict[str, dict[str, Any]] = {
    preset: {**_OURS, "aspp_rates": rates, **({"inn_blocks": 2} if preset == "test" else {})}
    for preset, rates in (("paper", (6, 12, 18)), ("small", (6, 12, 18)), ("tiny", (6, 12, 18)), ("test", (2, 4)))
}
"""What weights saved before the module switches existed were built with, per preset (see
:func:`~ivf_perception.models.registry.with_legacy_args`)."""
