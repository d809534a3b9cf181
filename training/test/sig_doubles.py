"""Tiny random stand-ins for the SIG's real components (BLIP, SD's VAE/UNet/text encoder, DDIM).

Test doubles, named as such: transformers and diffusers are not installed here and no BLIP or SD
weights can be fetched, so these small torch modules implement the *call interfaces* the
generator uses (``vae.encode(x).latent_dist`` with ``mean`` and ``std``, ``unet(x, t,
encoder_hidden_states=e).sample``, ``text_encoder(ids)[0]``, ``tokenizer(texts, padding=...,
max_length=..., truncation=..., return_tensors="pt").input_ids``, DDIM's ``set_timesteps`` /
``timesteps`` / ``add_noise`` / ``scale_model_input``, BLIP's ``processor(...)`` /
``generate(...)`` / ``decode(...)``). Their outputs are arbitrary: they exercise the code, they
produce no meaningful masks or captions.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ivf_training.sig import BlipCaptioner, SIGComponents

WORDS = ["[pad]", "[bos]", "a", "photograph", "of", "man", "car", "street", "dark", "two", "people", "parked",
         "road", "at", "night", "bikes", "[eos]"]


class WordTokenizer:
    """Word-level tokenizer over :data:`WORDS` (unknown words share one id), HF call interface."""

    model_max_length = 8

    def __call__(self, texts: list[str], padding: str = "max_length", max_length: int | None = None,
                 truncation: bool = True, return_tensors: str = "pt") -> SimpleNamespace:
        length = max_length or self.model_max_length
        rows = []
        for text in texts:
            ids = [1] + [WORDS.index(w) if w in WORDS else len(WORDS) for w in text.lower().split()]
            ids = ids[:length] + [0] * max(0, length - len(ids))
            rows.append(ids)
        return SimpleNamespace(input_ids=torch.tensor(rows, dtype=torch.int64))


class TinyTextEncoder(nn.Module):
    """Embedding + a linear layer; returns a tuple whose [0] is the last hidden state (B, L, d)."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(WORDS) + 1, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.proj(self.embed(ids)),)


class _Gaussian:
    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean, self.std = mean, (0.5 * logvar).exp()


class TinyVAE(nn.Module):
    """Encoder with factor 4: (B, 3, H, W) → latent distribution (B, 4, H/4, W/4)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.config = SimpleNamespace(scaling_factor=0.18215)

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return SimpleNamespace(latent_dist=_Gaussian(mean, logvar.clamp(-6, 2)))


class TinyUNet(nn.Module):
    """Conv on the latent plus a text-conditioned bias map; ``.sample`` like diffusers."""

    def __init__(self, text_dim: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.text = nn.Linear(text_dim, 4)
        self.gate = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        bias = self.text(encoder_hidden_states.mean(1))[:, :, None, None]
        return SimpleNamespace(sample=self.conv(x) + torch.tanh(self.gate(x)) * bias)


class TinyDDIM:
    """DDIM's schedule arithmetic with SD's settings (scaled-linear betas 0.00085–0.012, 1000
    steps, ``leading`` spacing, ``steps_offset`` 1) — a test double of diffusers' DDIMScheduler."""

    def __init__(self) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.timesteps = torch.tensor([])

    def set_timesteps(self, n: int) -> None:
        self.timesteps = (torch.arange(n) * (1000 // n)).flip(0) + 1

    def add_noise(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[int(t)]
        return a.sqrt() * x + (1 - a).sqrt() * noise

    def scale_model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


class TinyBlip(nn.Module):
    """Greedy "captioning": pooled pixels → a word per step (``generate`` appends to the prompt ids)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, len(WORDS))
        self.step = nn.Embedding(64, len(WORDS))

    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, max_new_tokens: int = 4,
                 **_: torch.Tensor) -> torch.Tensor:
        pooled = self.head(pixel_values.mean(dim=(2, 3)))
        new = [(pooled + self.step.weight[i]).argmax(-1) for i in range(min(max_new_tokens, 3))]
        return torch.cat([input_ids, torch.stack(new, 1)], 1)


class TinyBlipProcessor:
    """``__call__(images=, text=, return_tensors=)`` and ``decode(ids, skip_special_tokens=)``."""

    def __call__(self, images: np.ndarray, text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(images).permute(2, 0, 1)[None].float() / 255.0
        ids = torch.tensor([[1] + [WORDS.index(w) for w in text.split()]])
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> str:
        words = [WORDS[int(i)] for i in ids]
        return " ".join(w for w in words if not (skip_special_tokens and w.startswith("[")))


class FixedCaptioner:
    """A captioner returning a given caption (for keyword-dependent paths)."""

    def __init__(self, caption: str) -> None:
        self.caption = caption

    def __call__(self, rgb: np.ndarray) -> str:
        return self.caption


def tiny_components(seed: int = 0, caption: str | None = None, text_dim: int = 12) -> SIGComponents:
    """Seeded tiny components; ``caption`` replaces the tiny BLIP with a fixed caption."""
    torch.manual_seed(seed)
    captioner = (FixedCaptioner(caption) if caption is not None
                 else BlipCaptioner(TinyBlip(), TinyBlipProcessor(), "a photograph of", 4))
    return SIGComponents(captioner=captioner, tokenizer=WordTokenizer(), text_encoder=TinyTextEncoder(text_dim),
                         vae=TinyVAE(), unet=TinyUNet(text_dim), scheduler=TinyDDIM())
