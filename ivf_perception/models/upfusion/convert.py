"""The released UP-Fusion checkpoint (``Fuse.pth``) mapped onto :class:`UPFusion`, strictly.

The release stores ``{'AWF': state_dict}`` saved from a DistributedDataParallel model, so every
key starts with ``module.``; it holds the ConvNeXt-B tensors (``channel_select.convnext.0.*``)
and the dead third encoder (``encoder_level{1,2,3}_gt``, ``latent_gt``), which is dropped. The
other names differ from ours only by module layout (levels in lists here, ``LayerNorm.body``
unwrapped). After mapping, every one of our parameters must be present and nothing else left:
the only tensors the release cannot provide are ours to compute, the text embedding and the
four permutations it induces through the checkpoint's own ``text_fc`` (spec §1.4).

The release computed the embedding with OpenAI CLIP in fp16 on CUDA; an embedding computed
elsewhere can swap near-tied text scores, so :func:`convert_released_checkpoint` reports the
smallest score gaps (:meth:`UPFusion.permutation_margins`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, read_torch_file
from ivf_perception.models.upfusion.model import UPFusion

__all__ = ["COMPUTED_KEYS", "RELEASED_WRAPPER_KEY", "ReleasedCheckpointError", "convert_released_state_dict",
           "load_released_into", "map_released_key", "read_released_checkpoint"]

RELEASED_WRAPPER_KEY = "AWF"
"""The key under which Train.py saves the state dict."""

_DEAD = re.compile(r"^(encoder_level[123]_gt|latent_gt)\.")

_LEVEL = {"1": "0", "2": "1", "3": "2"}

# (pattern, replacement) applied in order to a released key without ``module.``.
_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in [
    (r"^patch_embed\.proj\.", "embed_vi."),
    (r"^ir_imb\.proj\.", "embed_ir."),
    (r"^channel_select\.convnext\.0\.", "scpm.backbone."),
    (r"^channel_select\.convnext_fc\.", "scpm.semantic_fc."),
    (r"^channel_select\.suo_conv\.", "scpm.to_rgb."),
    (r"^channel_select\.", "scpm."),
    (r"^expand_conv\.", "split_conv."),
    (r"^GEO_(vi|ir)\.affine_fc\.", r"gam_\1.affine."),
    (r"^encoder_level([123])_(vi|ir)\.", r"encoder_\2.L\1."),
    (r"^latent_(vi|ir)\.", r"encoder_\1.3."),
    (r"^down([123])_\d\.body\.", r"down.L\1."),
    (r"^encoder_shuffle_channel([123])\.", r"tcpm.L\1."),
    (r"^latent_shuffle_channel\.", "tcpm.3."),
    (r"^up([234])_\d\.body\.", r"up.U\1."),
    (r"^reduce_chan_level([23])\.", r"reduce.U\1."),
    (r"^decoder_level([123])\.", r"decoder.L\1."),
    (r"\.conv1x1\.", ".expand_conv."),
    (r"\.select_attn\.attn4$", ".attn.scale"),
    (r"\.select_attn\.", ".attn."),
    (r"\.(norm[123])\.body\.", r".\1."),
]]
_LEVEL_INDEX = re.compile(r"\.L([123])\.")
_UP_INDEX = re.compile(r"\.U([234])\.")

COMPUTED_KEYS = re.compile(r"^(text_embedding|tcpm\.\d\.text_permutation)$")
"""Our buffers that the release does not store (computed from the text embedding)."""


class ReleasedCheckpointError(IvfPerceptionError, ValueError):
    """The file is not a released UP-Fusion checkpoint of the expected layout."""


def map_released_key(key: str) -> str | None:
    """Our name for a released key (``module.`` already stripped); None for the dead ``_gt`` encoder."""
    if _DEAD.match(key):
        return None
    for pattern, repl in _RULES:
        key = pattern.sub(repl, key)
    key = _LEVEL_INDEX.sub(lambda m: f".{_LEVEL[m.group(1)]}.", key)
    return _UP_INDEX.sub(lambda m: f".{int(m.group(1)) - 2}.", key)  # up{2,3,4}, reduce_chan_level{2,3}


def read_released_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict inside a released ``Fuse.pth`` (``weights_only``), without ``module.``.

    Raises:
        ReleasedCheckpointError: missing, unreadable or unsafe file, or another layout.
    """
    path = Path(path)
    try:
        obj: Any = read_torch_file(path, what="UP-Fusion checkpoint")
    except TensorFileError as exc:
        raise ReleasedCheckpointError(str(exc)) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get(RELEASED_WRAPPER_KEY), Mapping):
        obj = obj[RELEASED_WRAPPER_KEY]
    if not isinstance(obj, Mapping) or not any(str(k).removeprefix("module.").startswith("channel_select.")
                                               for k in obj):
        found = sorted(map(str, obj))[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise ReleasedCheckpointError(
            f"{path} is not a released UP-Fusion checkpoint: expected {{'{RELEASED_WRAPPER_KEY}': state_dict}} with "
            f"'module.channel_select.*' keys (Train.py's layout), found {found}"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def convert_released_state_dict(state: Mapping[str, torch.Tensor], model: UPFusion) -> dict[str, torch.Tensor]:
    """Our state dict from a released one; checks that it covers ``model`` exactly.

    Args:
        state: released keys (``module.`` stripped), e.g. from :func:`read_released_checkpoint`.
        model: a fusion-only UP-Fusion (``num_classes=0``: the release has no segmentation head)
            of the checkpoint's configuration.

    Returns:
        Every tensor of ``model`` except :data:`COMPUTED_KEYS`.

    Raises:
        ReleasedCheckpointError: keys the model lacks, tensors it needs that are absent, or
            shapes that differ (another preset), each listed.
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = map_released_key(key)
        if name is None:
            continue
        if name not in own:
            unknown.append(key)
        mapped[name] = value
    needed = {k for k in own if not COMPUTED_KEYS.match(k)}
    missing = sorted(needed - mapped.keys())
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if unknown or missing or wrong:
        raise ReleasedCheckpointError(
            "released checkpoint does not fit UPFusion "
            f"({model.preset}, num_classes={model.num_classes}): {len(unknown)} unexpected keys {unknown[:5]}, "
            f"{len(missing)} missing {missing[:5]}, {len(wrong)} shape mismatches {wrong[:5]}"
        )
    return {k: v for k, v in mapped.items() if k in needed}


def load_released_into(model: UPFusion, path: str | os.PathLike[str],
                       text_embedding: torch.Tensor) -> list[float]:
    """Load ``Fuse.pth`` into ``model`` strictly and set the text embedding (hence π).

    Returns:
        :meth:`UPFusion.permutation_margins` of the result (sensitivity of π to the embedding).
    """
    mapped = convert_released_state_dict(read_released_checkpoint(path), model)
    result = model.load_state_dict(mapped, strict=False)
    left = [k for k in result.missing_keys if not COMPUTED_KEYS.match(k)]
    if left or result.unexpected_keys:  # convert_released_state_dict already checked; keep load strict
        raise ReleasedCheckpointError(
            f"{path}: after mapping, missing {left[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.set_text_embedding(text_embedding)
    return model.permutation_margins()

