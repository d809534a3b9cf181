"""MAFS: masked-autoencoder infrared–visible image fusion and semantic segmentation.

Paper: Wang, Zhang, Jia, Ma, "MAFS: Masked Autoencoder for Infrared-Visible Image Fusion and
Semantic Segmentation", IEEE TIP 2025 (arXiv 2509.11817). Reference code:
github.com/Abraham-Einstein/MAFS (model only; read to understand the architecture, nothing
copied). Its checkpoints are not used; ours are trained with ``training/`` and carry the
project's licence. ImageNet trunk weights, when given, keep their own licence (timm /
torchvision ResNet weights).

Architecture (DESIGN §5), one module each:

* ``encoder``: two ResNet trunks (visible, thermal) whose 7×7 stem convolution is replaced by
  shallow feature extraction (SFE), with a gated dynamic extraction module (DEM) exchanging
  information before each of the four stages (:mod:`.encoder`, :mod:`.trunk`);
* ``fuser``: AFM fuses the two shallow levels, CAM (spatial + channel attention) the four deep
  ones, PHF injects deep semantics into shallow detail progressively (eq. 5);
* ``fusion_head``: five densely connected invertible blocks (eqs. 6–7), 3×3 conv + tanh → Y,
  recombined with the visible Cb/Cr (BT.601) (:mod:`.invertible`);
* ``seg_head``: FPN pixel decoder + ASPP, three-stage inverted-pyramid transformer decoder and a
  multilabel (semantic / binary / boundary) head (:mod:`.seg_decoder`);
* ``recon_head``: the stage I masked-reconstruction decoder, used by :meth:`MAFS.reconstruct`
  (:mod:`.reconstruction`). Losses, masks and the two-stage recipe live in the training package.

The ``paper`` preset builds the public code's forms of the DEM mixing rule and gate
convolution, the AFM depth, the invertible decoder's half-instance-norm subnets and dense
aggregation, and the residual ASPP (rates 1–4); our earlier forms are constructor switches
(``dem_mix``, ``dem_conv``, ``afm_units``, ``inn_subnet``, ``inn_aggregation``, ``aspp_form``),
used by ``small``/``tiny``. ``docs/models/mafs.md`` compares paper, public code and ours.

Differences from the public code, on purpose:

* Any input size runs (``input_multiple`` 32 is what the engine pads to): the public code
  hard-codes interpolation fixes for 600×800 and 720×1280 inputs and evaluates batch size 1.
* No BatchNorm on globally pooled 1×1 maps (attention branches, ASPP pooling), which fails in
  training at batch size 1; no ``.cuda()`` anywhere (the public DEM allocates on the GPU).
* Every tensor the model computes is used: the public code runs ASPP on two pyramid levels and
  a mask-feature convolution whose results it discards.
* The public repository has no training code; the stage I decoder here is ours, shaped like its
  unused reconstruction decoder (semantic modulation, then 3×3 conv + tanh per image).
* Auxiliary heads: one binary and one boundary logit at the output and a semantic logit per
  transformer stage (the public code has a separate three-scale cascade for them).
"""

from __future__ import annotations

from typing import Any

from ivf_perception.models.mafs.model import LEGACY_ARGS, MAFS, PRESET_ARGS, _create_mafs, checkpoint_filter_fn
from ivf_perception.models.mafs.trunk import TrunkWeightsError, TrunkWeightsReport
from ivf_perception.models.registry import register_model

__all__ = [
    "LEGACY_ARGS",
    "MAFS",
    "PRESET_ARGS",
    "TrunkWeightsError",
    "TrunkWeightsReport",
    "checkpoint_filter_fn",
    "mafs",
    "test_mafs",
]


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def mafs(preset: str = "paper", **kwargs: Any) -> MAFS:
    """MAFS (paper preset: two ResNet-152 trunks, 5 invertible blocks, 3-stage transformer decoder)."""
    return _create_mafs(preset, **kwargs)


@register_model(presets=PRESET_ARGS, legacy_args=LEGACY_ARGS)
def test_mafs(preset: str = "test", **kwargs: Any) -> MAFS:
    """Micro MAFS for CPU tests of every code path."""
    return _create_mafs(preset, **kwargs)
