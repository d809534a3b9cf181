"""CLIP text features of the class prompts that guide CMFS's region map.

CMFS compares a learned projection of every image region with the CLIP text embedding of
"the photo of a {class}" for each class. The text side never changes during training or
inference, so it is computed once per class list (open_clip ViT-B/32 text tower), cached to a
small safetensors file and stored inside the model as a buffer: the robot never needs CLIP,
open_clip or the 600 MB checkpoint, only the engine weights that carry the features.

Sources, in the order :func:`text_features_for` tries them:

1. a precomputed feature file (``ivf-perception clip-text-features`` writes one);
2. an open_clip ViT-B/32 checkpoint file (a state dict: ``open_clip_pytorch_model.bin`` or
   ``open_clip_model.safetensors`` from the laion/openai releases), computed and cached;
3. ``"random"``: a randomly initialised text tower, for tests and CPU learning checks where no
   CLIP weights exist. The features are then arbitrary but fixed (seeded) and distinct per
   prompt, which is all the region gate needs to be exercised; it is not CLIP guidance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.io.tensor_files import TensorFileError, read_safetensors_with_metadata, read_tensor_file

__all__ = [
    "CLIP_MODEL",
    "PROMPT_TEMPLATE",
    "TEXT_DIM",
    "TextFeaturesError",
    "compute_text_features",
    "encode_prompts",
    "load_text_features",
    "prompts_for",
    "save_text_features",
    "text_features_for",
]

_log = logging.getLogger(__name__)

CLIP_MODEL = "ViT-B-32"
"""open_clip architecture whose text tower CMFS uses (512-d embeddings)."""

TEXT_DIM = 512
"""Width of ViT-B/32's joint embedding space."""

PROMPT_TEMPLATE = "the photo of a {}"
"""The paper's prompt; class names have underscores replaced by spaces."""

RANDOM_TOWER = "random"
"""Value of ``clip_weights`` that selects a seeded, randomly initialised text tower."""


class TextFeaturesError(IvfPerceptionError, ValueError):
    """Text features cannot be obtained or do not fit the class list."""


def prompts_for(class_names: Sequence[str]) -> list[str]:
    """The CLIP prompt of each class name (``car_stop`` → "the photo of a car stop")."""
    if not class_names:
        raise TextFeaturesError("CMFS needs at least one class name to build its text prompts")
    return [PROMPT_TEMPLATE.format(name.replace("_", " ").strip()) for name in class_names]


def _import_open_clip():  # noqa: ANN202  (module object)
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TextFeaturesError(
            "computing CLIP text features needs open_clip (pip install open_clip_torch, pinned in "
            "requirements/dev.txt); or pass a precomputed feature file (text_features=...)"
        ) from exc
    return open_clip


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict without unpickling arbitrary objects."""
    try:
        return read_tensor_file(path, what="CLIP weights")
    except TensorFileError as exc:
        raise TextFeaturesError(
            f"{exc}. Expected an open_clip state dict (.safetensors, or a .bin/.pt loadable with "
            "torch.load(weights_only=True)); OpenAI's TorchScript archives are not supported."
        ) from exc


@torch.no_grad()
def encode_prompts(prompts: Sequence[str], clip_weights: str | os.PathLike[str],
                   model_name: str = CLIP_MODEL) -> torch.Tensor:
    """Embed ``prompts`` with an open_clip text tower (shared by CMFS's class prompts and
    UP-Fusion's fixed prompt).

    Args:
        prompts: the texts.
        clip_weights: an open_clip checkpoint file of ``model_name``, or ``"random"`` (a tower
            initialised with seed 0: arbitrary but reproducible features, not CLIP guidance).
        model_name: open_clip architecture (``ViT-B-32``; ``ViT-B-32-quickgelu`` for OpenAI's
            weights).

    Returns:
        float32 features, one row per prompt, not normalised.

    Shape:
        -> (len(prompts), 512)
    """
    open_clip = _import_open_clip()
    if str(clip_weights) == RANDOM_TOWER:
        _log.warning("CLIP text features from a RANDOM text tower (no CLIP weights): text guidance is arbitrary")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(model_name, pretrained=None)
    else:
        path = Path(clip_weights)
        if not path.is_file():
            raise TextFeaturesError(
                f"CLIP weights not found: {path}. Download the open_clip {model_name} checkpoint "
                "(e.g. laion2b_s34b_b79k's open_clip_model.safetensors, or the OpenAI release's for "
                "-quickgelu) on a machine with internet access and pass its path, or pass a "
                "precomputed feature file instead."
            )
        model = open_clip.create_model(model_name, pretrained=None)
        result = model.load_state_dict(_read_state_dict(path), strict=False)
        text_keys = [k for k in result.missing_keys if not k.startswith("visual.")]
        if text_keys:
            raise TextFeaturesError(f"CLIP weights {path} lack text-tower tensors, e.g. {text_keys[:5]}")
    model.eval()
    tokens = open_clip.get_tokenizer(model_name)(list(prompts))
    return model.encode_text(tokens).float()


def compute_text_features(class_names: Sequence[str], clip_weights: str | os.PathLike[str],
                          model_name: str = CLIP_MODEL) -> torch.Tensor:
    """Embed the prompts of ``class_names`` with open_clip's text tower (:func:`encode_prompts`).

    Shape:
        -> (len(class_names), 512)
    """
    return encode_prompts(prompts_for(class_names), clip_weights, model_name)


def save_text_features(path: str | os.PathLike[str], features: torch.Tensor, class_names: Sequence[str],
                       source: str, model_name: str = CLIP_MODEL) -> Path:
    """Write features with their prompts and provenance (safetensors metadata)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"prompts": json.dumps(prompts_for(class_names)), "model": model_name, "source": source}
    tmp = path.with_name(path.name + ".tmp")
    save_file({"text_features": features.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_text_features(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Read a feature file; with ``class_names``, check it was made for exactly those prompts."""
    path = Path(path)
    try:
        tensors, meta = read_safetensors_with_metadata(path, what="CLIP text features")
    except TensorFileError as exc:
        raise TextFeaturesError(str(exc)) from exc
    features = tensors.get("text_features")
    if features is None:
        raise TextFeaturesError(f"cannot read CLIP text features {path}: it has no 'text_features' tensor "
                                f"(found {sorted(tensors)[:5]})")
    if features.ndim != 2 or features.shape[1] != TEXT_DIM:
        raise TextFeaturesError(f"{path}: expected text features of shape (classes, {TEXT_DIM}), "
                                f"got {tuple(features.shape)}")
    if class_names is not None:
        want = prompts_for(class_names)
        have = json.loads(meta.get("prompts", "[]"))
        if have != want:
            raise TextFeaturesError(f"{path} was made for prompts {have}, but the model needs {want}")
    return features.float()


def _cache_key(class_names: Sequence[str], clip_weights: str, model_name: str) -> str:
    """Identity of a computation: prompts, architecture and the weight file (path, size, mtime)."""
    ident: dict[str, object] = {"prompts": prompts_for(class_names), "model": model_name, "weights": clip_weights}
    if clip_weights != RANDOM_TOWER:
        st = Path(clip_weights).stat()
        ident.update(weights=str(Path(clip_weights).resolve()), size=st.st_size, mtime=st.st_mtime_ns)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def text_features_for(class_names: Sequence[str], *, features_file: str | os.PathLike[str] | None = None,
                      clip_weights: str | os.PathLike[str] | None = None,
                      cache_dir: str | os.PathLike[str] | None = None,
                      model_name: str = CLIP_MODEL) -> torch.Tensor:
    """Text features for ``class_names`` from a file, or computed from CLIP weights and cached.

    Raises:
        TextFeaturesError: no source given (the message lists what to provide), a missing or
            unreadable file, or features made for other prompts.
    """
    if features_file is not None:
        return load_text_features(features_file, class_names)
    if clip_weights is None:
        raise TextFeaturesError(
            "CMFS needs CLIP text features of its class prompts. Provide one of: a precomputed "
            "feature file (model.text_features, written by `ivf-perception clip-text-features`), "
            f"or an open_clip {model_name} checkpoint file (model.clip_weights; computed once and "
            "cached), or model.clip_weights=random for a randomly initialised text tower (tests and "
            "CPU learning checks only: no real CLIP guidance)."
        )
    clip_weights = str(clip_weights)
    if clip_weights != RANDOM_TOWER and not Path(clip_weights).is_file():
        compute_text_features(class_names, clip_weights, model_name)  # raises the precise error
    if cache_dir is None:
        return compute_text_features(class_names, clip_weights, model_name)
    cached = Path(cache_dir) / f"clip_text_{_cache_key(class_names, clip_weights, model_name)}.safetensors"
    if cached.is_file():
        return load_text_features(cached, class_names)
    features = compute_text_features(class_names, clip_weights, model_name)
    save_text_features(cached, features, class_names, source=clip_weights, model_name=model_name)
    return features
