"""Settings of the Semantic Information Generator: every number that changes its output.

Why all of them are recorded: the paper names none of its captioner/diffusion settings (spec
§2.1); the defaults are the diffusers DiffEdit recipe (our reconstruction [R]). A cache of
guidance is only valid for the settings that produced it, so :meth:`SIGSettings.to_dict` is
written next to every cache and hashed (:func:`ivf_perception.guidance.settings_hash`); a
cache made with other settings is refused rather than silently mixed in.

Model *files* are not part of the hash (moving a folder must not invalidate a cache) but the
model *names* are: change ``captioner_model`` or ``diffusion_model`` when you use other weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ivf_perception.errors import IvfPerceptionError

__all__ = ["SIGSettings", "SIGSettingsError", "load_sig_settings"]


class SIGSettingsError(IvfPerceptionError, ValueError):
    """A SIG settings file or value is unusable (the message names the key or the file)."""


@dataclass(frozen=True)
class SIGSettings:
    """What the generator does, with the diffusers DiffEdit defaults [R].

    Attributes:
        captioner_model: name of the BLIP checkpoint (recorded; the paper names none).
        diffusion_model: name of the Stable Diffusion checkpoint (recorded).
        caption_prompt: text prefix BLIP continues ("a photograph of", diffusers' DiffEdit guide).
        max_new_tokens: caption length limit.
        num_maps_per_mask: noise draws averaged into one mask (DiffEdit: 10).
        mask_encode_strength: fraction of the DDIM schedule the latent is noised to (0.5).
        num_inference_steps: DDIM steps the schedule is divided into (50).
        guidance_scale: classifier-free guidance scale (7.5; <= 1 turns guidance off).
        mask_thresholding_ratio: the guidance map is clamped at this many times its mean (3).
        mask_threshold: a pixel is foreground when the normalised map exceeds this (0.5).
        normalise: ``per_image``: each image's map is divided by its own mean (ours: diffusers
            divides by the mean over the whole batch, which couples the masks of batched images).
        max_side: images are resized so their longer side is at most this (SD-2.1: 768).
        size_multiple: and both sides a multiple of this (the UNet's down-sampling, in pixels).
        vocabulary: class table whose object classes are the keywords (``mfnet``, ``pst900``, ``fmb``).
        keyword_classes: explicit class names instead of ``vocabulary``'s table.
        keyword_extra: extra synonyms per class name.
        seed: seed of the VAE sample and the noise maps, reset for every image, so the guidance of
            an image is a function of the image and these settings alone.
        text_dtype: dtype the text tokens are stored in (``float16`` halves the cache).
    """

    captioner_model: str = "Salesforce/blip-image-captioning-base"
    diffusion_model: str = "stabilityai/stable-diffusion-2-1"
    caption_prompt: str = "a photograph of"
    max_new_tokens: int = 128
    num_maps_per_mask: int = 10
    mask_encode_strength: float = 0.5
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    mask_thresholding_ratio: float = 3.0
    mask_threshold: float = 0.5
    normalise: str = "per_image"
    max_side: int = 768
    size_multiple: int = 64
    vocabulary: str = "mfnet"
    keyword_classes: tuple[str, ...] = ()
    keyword_extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seed: int = 0
    text_dtype: str = "float16"

    def __post_init__(self) -> None:
        checks = [
            (self.num_maps_per_mask >= 1, "num_maps_per_mask must be >= 1"),
            (0.0 < self.mask_encode_strength <= 1.0, "mask_encode_strength must be in (0, 1]"),
            (self.num_inference_steps >= 1, "num_inference_steps must be >= 1"),
            (self.mask_thresholding_ratio > 0, "mask_thresholding_ratio must be > 0"),
            (0.0 <= self.mask_threshold < 1.0, "mask_threshold must be in [0, 1)"),
            (self.normalise == "per_image", "normalise must be per_image"),
            (self.max_side >= self.size_multiple >= 1, "need max_side >= size_multiple >= 1"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.text_dtype in ("float16", "float32"), "text_dtype must be float16 or float32"),
        ]
        for ok, message in checks:
            if not ok:
                raise SIGSettingsError(f"SIG settings: {message}; got {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists), the form recorded in a cache."""
        data = asdict(self)
        data["keyword_classes"] = list(self.keyword_classes)
        data["keyword_extra"] = {k: list(v) for k, v in sorted(self.keyword_extra.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "SIG settings") -> SIGSettings:
        """Build from plain data; an unknown key is an error listing the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SIGSettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = dict(data)
        if "keyword_classes" in values:
            values["keyword_classes"] = tuple(values["keyword_classes"])
        if "keyword_extra" in values:
            values["keyword_extra"] = {str(k): tuple(v) for k, v in dict(values["keyword_extra"]).items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise SIGSettingsError(f"{where}: {exc}") from exc


def load_sig_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SIGSettings:
    """Settings from a YAML/JSON file (``None``: the defaults) with ``overrides`` applied on top.

    Raises:
        SIGSettingsError: the file is missing or not a mapping, or a key is unknown.
    """
    data: dict[str, Any] = {}
    where = "SIG settings"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise SIGSettingsError(f"SIG settings file not found: {path}")
        import yaml  # JSON is YAML

        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise SIGSettingsError(f"{path}: expected a mapping of SIG settings, got {type(loaded).__name__}")
        data.update(loaded)
    data.update(overrides or {})
    return SIGSettings.from_dict(data, where=where)
