"""TeSG's Semantic Information Generator (spec §2.1): caption, keyword removal, masks, text tokens.

One frozen function of an image pair, run offline before training (``ivf-train tesg-guidance``):

1. ``T = BLIP(I_vis)`` — the captioner continues ``caption_prompt``;
2. ``T̂`` = T without the dataset's keywords (:mod:`.keywords`); none found → flag ``no_keyword``
   and an all-background mask (never a fake one);
3. ``M_vis``, ``M_ir`` = DiffEdit masks of the visible and of the thermal image (grey replicated
   to three channels [R]) between T and T̂ (:mod:`.diffedit`), ``M = M_vis ∪ M_ir`` (eq. 3),
   brought from latent resolution to the image's size by nearest-neighbour up-sampling [R];
4. ``F_t`` = the diffusion model's text-encoder tokens of T (L × d_t, all tokens: eq. 7 is a
   cross-attention over them [R]).

The components are injected (:class:`SIGComponents`): the real ones come from
:func:`ivf_training.sig.loaders.load_sig_components` (transformers + diffusers, optional), tests
pass tiny random modules with the same call interfaces. Nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .diffedit import diffedit_mask
from .keywords import KeywordVocabulary, RemovalResult, remove_keywords
from .settings import SIGSettings

__all__ = ["Captioner", "BlipCaptioner", "SIGComponents", "SIGResult", "SemanticInformationGenerator",
           "encode_text", "sig_input_size", "vocabulary_of"]

Captioner = Callable[[np.ndarray], str]
"""A function from an RGB uint8 image (H, W, 3) to its caption."""


class BlipCaptioner:
    """BLIP conditional captioning through the transformers call interface.

    ``processor(images=..., text=prompt, return_tensors="pt")`` → ``model.generate(**inputs,
    max_new_tokens=n)`` → ``processor.decode(ids, skip_special_tokens=True)``, as transformers'
    BLIP example does; the returned caption starts with the prompt.

    Args:
        model: ``BlipForConditionalGeneration`` (or anything with that ``generate``).
        processor: ``BlipProcessor`` (or anything with that ``__call__`` and ``decode``).
        prompt: the text the caption continues.
        max_new_tokens: caption length limit.
    """

    def __init__(self, model: Any, processor: Any, prompt: str, max_new_tokens: int) -> None:
        self.model = model
        self.processor = processor
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> str:
        param = next(self.model.parameters())
        inputs = self.processor(images=rgb, text=self.prompt, return_tensors="pt")
        # pixel values in the model's precision (fp16 on a GPU), token ids unchanged
        inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype)
                  if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return " ".join(str(self.processor.decode(ids[0], skip_special_tokens=True)).split())


@torch.no_grad()
def encode_text(tokenizer: Any, text_encoder: Any, texts: list[str]) -> torch.Tensor:
    """Text-encoder tokens of ``texts``, padded to the tokenizer's ``model_max_length`` (SD: 77),
    as diffusers encodes prompts (``text_encoder(ids)[0]``, the last hidden state).

    Shape:
        → (len(texts), L, d_t) in the encoder's dtype
    """
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


@dataclass
class SIGComponents:
    """The frozen models the generator runs (see the module docstring for their interfaces)."""

    captioner: Captioner
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any


@dataclass
class SIGResult:
    """The guidance of one image pair.

    Attributes:
        caption: T; query: T̂; removed: the removed keyword occurrences.
        mask_vis, mask_ir, mask: bool (H, W) at the input image's size; ``mask = mask_vis | mask_ir``.
        text_tokens: F_t, (L, d_t), dtype ``settings.text_dtype``, on the CPU.
        flags: ``no_keyword`` (T̂ = T: empty mask by definition), ``empty_mask`` (keywords found
            but no pixel passed the threshold).
    """

    caption: str
    query: str
    removed: tuple[str, ...]
    mask_vis: torch.Tensor
    mask_ir: torch.Tensor
    mask: torch.Tensor
    text_tokens: torch.Tensor
    flags: list[str] = field(default_factory=list)


def vocabulary_of(settings: SIGSettings) -> KeywordVocabulary:
    """The keyword vocabulary the settings name (explicit classes win over the table)."""
    if settings.keyword_classes:
        return KeywordVocabulary.for_classes(settings.keyword_classes, settings.keyword_extra)
    return KeywordVocabulary.for_dataset(settings.vocabulary, settings.keyword_extra)


def sig_input_size(height: int, width: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The size images are resized to for the diffusion model: longer side <= ``max_side``,
    aspect kept, both sides rounded to a multiple of ``multiple`` (at least one multiple)."""
    scale = min(1.0, max_side / max(height, width))
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


class SemanticInformationGenerator:
    """Guidance (caption, masks, text tokens) of visible/thermal pairs.

    Args:
        components: the frozen models.
        settings: what the generator does (recorded with every cache).
        device: where the diffusion models run (the components must already be there).
    """

    def __init__(self, components: SIGComponents, settings: SIGSettings, device: str | torch.device = "cpu") -> None:
        self.components = components
        self.settings = settings
        self.vocabulary = vocabulary_of(settings)
        self.device = torch.device(device)

    def keywords(self, caption: str) -> RemovalResult:
        """T̂ of a caption under this generator's vocabulary."""
        return remove_keywords(caption, self.vocabulary)

    def _mask(self, image: np.ndarray, texts: torch.Tensor) -> torch.Tensor:
        """DiffEdit mask of one (H, W, 3) uint8 image at its own size."""
        s = self.settings
        h, w = image.shape[:2]
        size = sig_input_size(h, w, s.max_side, s.size_multiple)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255.0)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        generator = torch.Generator(device=self.device).manual_seed(s.seed)
        c = self.components
        mask = diffedit_mask(c.vae, c.unet, c.scheduler, x.to(self.device), texts[0:1], texts[1:2], texts[2:3],
                             num_maps=s.num_maps_per_mask, strength=s.mask_encode_strength,
                             num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                             ratio=s.mask_thresholding_ratio, threshold=s.mask_threshold, generator=generator)
        return F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0].bool().cpu()

    def __call__(self, rgb: np.ndarray, thermal: np.ndarray) -> SIGResult:
        """Guidance of one pair.

        Args:
            rgb: (H, W, 3) uint8 visible image.
            thermal: (H, W) uint8 or float in [0, 1] thermal image, registered to ``rgb``.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
        if thermal.shape != rgb.shape[:2]:
            raise ValueError(f"thermal {thermal.shape} must be registered to rgb {rgb.shape[:2]} (same H, W)")
        th8 = thermal if thermal.dtype == np.uint8 else np.clip(np.rint(thermal * 255.0), 0, 255).astype(np.uint8)
        caption = self.components.captioner(rgb)
        removal = self.keywords(caption)
        texts = encode_text(self.components.tokenizer, self.components.text_encoder,
                            [removal.caption, removal.query, ""])
        tokens = texts[0].detach().to("cpu", getattr(torch, self.settings.text_dtype))
        flags: list[str] = []
        h, w = rgb.shape[:2]
        if not removal.found:
            flags.append("no_keyword")
            empty = torch.zeros((h, w), dtype=torch.bool)
            return SIGResult(caption, removal.query, (), empty, empty.clone(), empty.clone(), tokens, flags)
        mask_vis = self._mask(rgb, texts)
        mask_ir = self._mask(np.repeat(th8[..., None], 3, axis=2), texts)
        mask = mask_vis | mask_ir
        if not bool(mask.any()):
            flags.append("empty_mask")
        return SIGResult(caption, removal.query, removal.removed, mask_vis, mask_ir, mask, tokens, flags)
