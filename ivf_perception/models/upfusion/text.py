"""UP-Fusion's fixed CLIP prompt and its embedding.

The released code encodes one prompt with OpenAI CLIP ViT-B/32 (``encode_text``, fp16 on CUDA,
then ``.float()``, not normalised) and feeds the same vector to every TCPM for every image. Its
open_clip equivalent is ``ViT-B-32-quickgelu`` with the OpenAI weights. The embedding is
computed once and stored in the model (buffer ``text_embedding``) together with the four
channel permutations it induces, so inference never needs CLIP.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ivf_perception.io.tensor_files import TensorFileError, read_tensor_file
from ivf_perception.models.cmfs.text_features import RANDOM_TOWER, TextFeaturesError, encode_prompts
from ivf_perception.models.upfusion.tcpm import TEXT_DIM

__all__ = ["CLIP_MODEL", "PROMPT", "RANDOM_TOWER", "TextFeaturesError", "check_text_embedding",
           "load_text_embedding", "prompt_embedding"]

CLIP_MODEL = "ViT-B-32-quickgelu"
"""open_clip architecture of OpenAI's ViT-B/32 (QuickGELU activations)."""

PROMPT = (
    "The image contains multiple views of the same scene captured from different modalities, each "
    "providing complementary information. Focus on preserving fine details, semantic structures, and "
    "key regions that contribute to understanding the scene."
)
"""The one prompt the released Train.py and Test.py use."""


def check_text_embedding(text: torch.Tensor, source: str) -> torch.Tensor:
    """``text`` as a float32 (512,) vector; refuses other shapes and non-finite values.

    Raises:
        TextFeaturesError: naming ``source``.
    """
    if text.ndim == 2 and text.shape[0] == 1:
        text = text[0]
    if text.shape != (TEXT_DIM,):
        raise TextFeaturesError(f"{source}: expected one {TEXT_DIM}-d text embedding, got shape {tuple(text.shape)}")
    text = text.detach().float()
    if not torch.isfinite(text).all():
        raise TextFeaturesError(f"{source}: the text embedding has non-finite values (NaN/inf)")
    return text


def prompt_embedding(clip_weights: str | os.PathLike[str], model_name: str = CLIP_MODEL) -> torch.Tensor:
    """Embed :data:`PROMPT` with open_clip (a checkpoint file of OpenAI's weights, or ``"random"``).

    Shape:
        -> (512,)
    """
    return check_text_embedding(encode_prompts([PROMPT], clip_weights, model_name)[0], f"CLIP {clip_weights}")


def load_text_embedding(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an embedding file (safetensors or a ``weights_only`` PyTorch file) holding one tensor
    named ``text_embedding`` or ``text_features`` (what ``ivf-perception clip-text-features`` writes).

    Raises:
        TextFeaturesError: missing or unreadable file, no such tensor, wrong shape, non-finite.
    """
    path = Path(path)
    try:
        tensors = read_tensor_file(path, what="UP-Fusion text embedding")
    except TensorFileError as exc:
        raise TextFeaturesError(str(exc)) from exc
    for key in ("text_embedding", "text_features"):
        if key in tensors:
            return check_text_embedding(tensors[key], str(path))
    raise TextFeaturesError(f"{path}: no 'text_embedding' or 'text_features' tensor (found {sorted(tensors)[:5]})")
