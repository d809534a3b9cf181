"""ResNet trunks of the MAFS encoder and their ImageNet weights from a local file.

The trunk is timm's ResNet (built with ``pretrained=False``: no hub download, which fails on
offline robots and in CI) minus the 7×7 stem convolution, which MAFS replaces by its shallow
feature extraction (SFE), and minus the classifier. Everything that remains keeps timm's (and
torchvision's, which is the same) parameter names, so an ImageNet checkpoint of either library
maps onto it key by key: ``bn1.*`` and ``layer1.*`` … ``layer4.*``.

Weight files are read without running code, by the package's one tensor-file reader
(:mod:`ivf_perception.io.tensor_files`: safetensors, or ``torch.load(weights_only=True)``,
which refuses pickles that hold more than tensors and containers; DESIGN §3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import timm
import torch
from timm.models import ResNet
from torch import nn

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, TensorFileNotFoundError, read_tensor_file
from ivf_perception.models.layers.factories import DeviceLike

__all__ = [
    "IGNORED_IMAGENET_KEYS",
    "ResNetTrunk",
    "TrunkWeightsError",
    "TrunkWeightsReport",
    "load_trunk_weights",
    "read_state_dict",
]

_log = logging.getLogger(__name__)

IGNORED_IMAGENET_KEYS = ("conv1.", "fc.")
"""Prefixes of ImageNet checkpoint keys the trunk has no place for, by design: the 7×7 stem
convolution (replaced by SFE) and the classifier. They are reported as ``ignored``, not as
``unexpected``."""

_HOW_TO_GET = (
    "download the ImageNet weights of the trunk (e.g. timm's `{name}` model.safetensors from its "
    "Hugging Face page, or torchvision's {name} .pth) on a connected machine, copy the file here and "
    "pass its path as trunk_weights=...; or leave trunk_weights=None to start from random initialisation"
)


class TrunkWeightsError(IvfPerceptionError, ValueError):
    """A trunk weight file is missing, corrupt, refused (unsafe pickle) or does not fit the trunk."""


@dataclass
class TrunkWeightsReport:
    """What loading a weight file into a trunk did.

    Attributes:
        path: the file.
        loaded: trunk tensors set from the file.
        missing: trunk tensors the file lacks (left at their initialisation).
        unexpected: file tensors with no place in the trunk (other than ``ignored``).
        ignored: file tensors the trunk omits by design (stem conv, classifier).
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        return (f"{self.path}: loaded {len(self.loaded)} tensors, missing {len(self.missing)}, "
                f"unexpected {len(self.unexpected)}, ignored {len(self.ignored)} (stem conv, classifier)")


class ResNetTrunk(nn.Module):
    """A timm ResNet without its stem convolution and classifier.

    Why the stem BatchNorm stays: the SFE output passes through the pretrained ``bn1`` + ReLU,
    so the pretrained stages receive activations normalised with ImageNet statistics.

    Args:
        name: a timm ResNet name (``resnet18`` … ``resnet152``, ``test_resnet`` for tests).
        device, dtype: where to create parameters.

    Attributes:
        stem_chs: channels the stem BatchNorm expects (what SFE must produce).
        stage_chs: output channels of ``layer1`` … ``layer4``.

    Shape:
        stem: (B, stem_chs, H, W)  ->  (B, stem_chs, H, W)
        stage(i): (B, C_in, H, W)  ->  (B, stage_chs[i], H / s_i, W / s_i), s = (1, 2, 2, 2)
    """

    def __init__(self, name: str, device: DeviceLike = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0, device=device, dtype=dtype)
        except RuntimeError as exc:  # timm's "Unknown model (...)"
            raise ValueError(f"Unknown trunk '{name}': expected a timm ResNet name such as resnet18, "
                             f"resnet34, resnet50, resnet101 or resnet152 ({exc})") from exc
        if not isinstance(net, ResNet):
            raise ValueError(f"Trunk '{name}' is a {type(net).__name__}, not a timm ResNet; MAFS needs a "
                             "ResNet (resnet18, resnet34, resnet50, resnet101, resnet152)")
        self.name = name
        self.bn1, self.act1, self.maxpool = net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stem_chs = cast(nn.BatchNorm2d, net.bn1).num_features
        # timm types feature_info loosely; each entry is a dict with an int "num_chs"
        self.stage_chs = [int(cast(dict[str, int], info)["num_chs"]) for info in net.feature_info[1:]]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's BatchNorm and activation (applied to the SFE output)."""
        return self.act1(self.bn1(x))

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run ``layer{index + 1}``; stage 0 starts with the stem max-pool, as in the ResNet."""
        if index == 0:
            x = self.maxpool(x)
        return getattr(self, f"layer{index + 1}")(x)


def read_state_dict(path: str | Path, trunk_name: str = "resnet152") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without running code from it.

    Accepts ``.safetensors`` and PyTorch files that ``torch.load(weights_only=True)`` reads
    (timm/torchvision ImageNet checkpoints), with the state dict at the top level or nested as
    training scripts save it; a ``module.`` prefix (DataParallel) is removed
    (:func:`~ivf_perception.io.tensor_files.read_tensor_file`).

    Args:
        path: the checkpoint.
        trunk_name: the ResNet the file is meant for, named in the "how to get it" advice.

    Raises:
        TrunkWeightsError: the file is missing, corrupt, refused as an unsafe pickle, or holds
            no tensors.
    """
    try:
        return read_tensor_file(path, what="trunk weights file")
    except TensorFileNotFoundError as exc:
        raise TrunkWeightsError(f"trunk weights file {path} not found; {_HOW_TO_GET.format(name=trunk_name)}") from exc
    except TensorFileError as exc:
        raise TrunkWeightsError(str(exc)) from exc


def load_trunk_weights(trunk: ResNetTrunk, path: str | Path) -> TrunkWeightsReport:
    """Copy ImageNet weights from ``path`` into ``trunk``, key by key.

    Every tensor of the file whose name is a trunk tensor is copied (cast to the trunk's dtype);
    the rest is reported. A shape mismatch is an error, not a silent skip: it means the file is
    for another depth or width of ResNet.

    Args:
        trunk: the trunk to fill.
        path: ``.safetensors`` or a PyTorch checkpoint (read with ``weights_only=True``).

    Returns:
        The report (``missing`` ignores BatchNorm ``num_batches_tracked`` counters, which old
        checkpoints lack).

    Raises:
        TrunkWeightsError: unreadable file, wrong shapes, or no tensor of the file fits.
    """
    path = Path(path)
    state = read_state_dict(path, trunk.name)
    own = trunk.state_dict()
    report = TrunkWeightsReport(path=path)
    mismatched = []
    matched: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in own:
            if tuple(value.shape) != tuple(own[key].shape):
                mismatched.append(f"{key}: file {tuple(value.shape)} vs trunk {tuple(own[key].shape)}")
            else:
                matched[key] = value
        elif key.startswith(IGNORED_IMAGENET_KEYS):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    if mismatched:
        shown = "; ".join(mismatched[:5]) + (f"; ... ({len(mismatched)} in all)" if len(mismatched) > 5 else "")
        raise TrunkWeightsError(
            f"{path} does not fit the {trunk.name} trunk, wrong shapes: {shown}. "
            f"Is it a checkpoint of another ResNet depth? {_HOW_TO_GET.format(name=trunk.name)}"
        )
    if not matched:
        raise TrunkWeightsError(
            f"{path}: none of its {len(state)} tensors has a trunk name (e.g. 'layer1.0.conv1.weight'; "
            f"the file has e.g. '{next(iter(state))}'); {_HOW_TO_GET.format(name=trunk.name)}"
        )
    trunk.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = sorted(k for k in own if k not in matched and not k.endswith("num_batches_tracked"))
    report.unexpected.sort()
    report.ignored.sort()
    _log.info("trunk weights %s", report.summary())
    if report.missing or report.unexpected:
        _log.warning("trunk weights %s: missing %s, unexpected %s", path, report.missing[:10], report.unexpected[:10])
    return report
