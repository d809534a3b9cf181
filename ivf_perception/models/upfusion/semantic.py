"""The frozen ImageNet ConvNeXt that SCPM consults (torchvision's models, torchvision's loader).

UP-Fusion calls ``torchvision.models.convnext_base(pretrained=True)`` inside ``__init__`` and
keeps the ``features`` stage stack. Building a model must not download anything, so here the
tower is built with ``weights=None`` and, when a file is given, loaded strictly from a local
torchvision state dict (read with ``torch.load(weights_only=True)`` or safetensors). Trained and
converted UP-Fusion weights carry the tower's tensors, so the file is needed only to start a
training run from ImageNet features.

``"test"`` is a two-stage torchvision ConvNeXt (16 channels out) for CPU tests: the same class,
loader and code path, with no pretrained weights anywhere.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, read_tensor_file

__all__ = ["SEMANTIC_BACKBONES", "SemanticBackbone", "SemanticWeightsError", "build_semantic_backbone"]


class SemanticWeightsError(IvfPerceptionError, ValueError):
    """The ConvNeXt file is missing, unreadable, or not a torchvision state dict of that tower."""


@dataclass(frozen=True)
class SemanticBackbone:
    """A torchvision ConvNeXt usable as SCPM's semantic tower.

    Attributes:
        builder: name of the torchvision builder (``convnext_base``), or ``"test"``.
        dim: channels of the last stage (the pooled feature width).
        file: torchvision's file name of the ImageNet-1K weights (what to pass as
            ``semantic_weights``), empty for the test tower.
    """

    builder: str
    dim: int
    file: str


SEMANTIC_BACKBONES: dict[str, SemanticBackbone] = {
    "convnext_base": SemanticBackbone("convnext_base", 1024, "convnext_base-6075fbad.pth"),
    "convnext_tiny": SemanticBackbone("convnext_tiny", 768, "convnext_tiny-983f1562.pth"),
    "test": SemanticBackbone("test", 16, ""),
}


def _torchvision_convnext():  # noqa: ANN202  (module object)
    try:
        from torchvision.models import convnext
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SemanticWeightsError(
            "UP-Fusion's semantic tower is torchvision's ConvNeXt: pip install torchvision "
            "(a build matching your torch; see requirements/)"
        ) from exc
    return convnext


def _build(spec: SemanticBackbone) -> nn.Module:
    convnext = _torchvision_convnext()
    if spec.builder == "test":
        cfg = convnext.CNBlockConfig
        return convnext.ConvNeXt([cfg(8, 16, 1), cfg(16, None, 1)], stochastic_depth_prob=0.0)
    # weights=None: never download; torchvision's default stochastic depth (0.5 for base) is kept.
    return getattr(convnext, spec.builder)(weights=None)


def _load(net: nn.Module, spec: SemanticBackbone, path: Path) -> None:
    if not path.is_file():
        raise SemanticWeightsError(
            f"ConvNeXt weights not found: {path}. UP-Fusion's SCPM uses torchvision's {spec.builder} "
            f"ImageNet-1K weights ({spec.file}, https://download.pytorch.org/models/{spec.file}); "
            "download it on a machine with internet access and pass its path as semantic_weights, "
            "or start from trained UP-Fusion weights, which contain the tower."
        )
    try:
        state = read_tensor_file(path, what=f"{spec.builder} weights")
    except TensorFileError as exc:
        raise SemanticWeightsError(str(exc)) from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise SemanticWeightsError(
            f"{path} is not a torchvision {spec.builder} state dict: {' '.join(s.strip() for s in first)}"
        ) from exc


def build_semantic_backbone(name: str, weights: str | os.PathLike[str] | None = None,
                            device: torch.device | str | None = None,
                            dtype: torch.dtype | None = None) -> tuple[nn.Sequential, int]:
    """The ``features`` stage stack of a torchvision ConvNeXt, frozen, and its output width.

    Args:
        name: a key of :data:`SEMANTIC_BACKBONES`.
        weights: torchvision state dict file of the whole classifier (``features.*`` and
            ``classifier.*``), loaded strictly; None keeps the random initialisation.
        device, dtype: where the tower lives (``meta`` builds it without memory).

    Raises:
        SemanticWeightsError: an unknown name, a missing or unfitting file.
    """
    if name not in SEMANTIC_BACKBONES:
        raise SemanticWeightsError(
            f"Unknown semantic backbone {name!r}; expected one of {', '.join(SEMANTIC_BACKBONES)}")
    spec = SEMANTIC_BACKBONES[name]
    with torch.device(device) if device is not None else contextlib.nullcontext():
        net = _build(spec)
    if weights is not None:
        _load(net, spec, Path(weights))
    features = net.features
    assert isinstance(features, nn.Sequential), "torchvision's ConvNeXt keeps its stages in a Sequential"
    if dtype is not None:
        features = features.to(dtype)
    features.requires_grad_(False)  # the code runs it under no_grad: it is never trained
    return features, spec.dim

