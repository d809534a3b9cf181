"""The real SIG components from local folders: BLIP (transformers) and Stable Diffusion (diffusers).

Optional: ``pip install 'ivf-perception-training[tesg-sig]'`` (transformers, diffusers). Never a
robot dependency: only ``ivf-train tesg-guidance`` imports this module, and only when it runs.
Nothing is downloaded: both folders are the layouts ``save_pretrained`` writes (a hub snapshot
downloaded elsewhere works as is), read with ``local_files_only=True``, weights from
``.safetensors`` only (``.bin`` files are pickles and are not loaded).

Files checked before any import, so a missing one is named with the folder it belongs in:

* BLIP folder: ``config.json``, ``preprocessor_config.json`` (or ``processor_config.json``),
  ``model.safetensors`` (or ``model.safetensors.index.json``), ``vocab.txt`` (or
  ``tokenizer.json``), ``tokenizer_config.json``;
* SD folder: ``vae/``, ``unet/`` (``config.json``, ``diffusion_pytorch_model.safetensors``),
  ``text_encoder/`` (``config.json``, ``model.safetensors``), ``tokenizer/`` (``vocab.json`` and
  ``merges.txt``, or ``tokenizer.json``; ``tokenizer_config.json``), ``scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch

from ivf_perception.errors import IvfPerceptionError

from .generator import BlipCaptioner, SIGComponents
from .settings import SIGSettings

__all__ = ["SIGModelError", "BLIP_FILES", "SD_FILES", "missing_model_files", "load_sig_components"]

INSTALL_HINT = "pip install 'ivf-perception-training[tesg-sig]' (installs transformers and diffusers)"

BLIP_FILES: tuple[tuple[str, ...], ...] = (
    # hub snapshots carry preprocessor_config.json + vocab.txt; transformers 5's save_pretrained
    # writes processor_config.json + tokenizer.json
    ("config.json",), ("preprocessor_config.json", "processor_config.json"),
    ("model.safetensors", "model.safetensors.index.json"), ("vocab.txt", "tokenizer.json"), ("tokenizer_config.json",),
)
"""Files of a BLIP folder; each entry lists alternatives (one of them must exist)."""

SD_FILES: tuple[tuple[str, ...], ...] = (
    ("vae/config.json",),
    ("vae/diffusion_pytorch_model.safetensors",),
    ("unet/config.json",),
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors.index.json"),
    ("text_encoder/config.json",),
    ("text_encoder/model.safetensors", "text_encoder/model.safetensors.index.json"),
    ("tokenizer/vocab.json", "tokenizer/tokenizer.json"), ("tokenizer/merges.txt", "tokenizer/tokenizer.json"),
    ("tokenizer/tokenizer_config.json",),
    ("scheduler/scheduler_config.json",),
)
"""Files of a Stable Diffusion folder (diffusers layout)."""


class SIGModelError(IvfPerceptionError, ValueError):
    """SIG model files are missing, or the packages that read them are not installed."""


def missing_model_files(folder: Path, required: tuple[tuple[str, ...], ...]) -> list[str]:
    """The required files absent from ``folder`` (alternatives joined with ``or``)."""
    return [" or ".join(str(folder / f) for f in alternatives) for alternatives in required
            if not any((folder / f).is_file() for f in alternatives)]


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SIGModelError(f"the Semantic Information Generator needs the package {name!r}: {INSTALL_HINT}") from exc


def load_sig_components(blip_dir: str | Path, diffusion_dir: str | Path, settings: SIGSettings, *,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SIGComponents:
    """BLIP captioner, SD text encoder + tokenizer, VAE, UNet and DDIM scheduler, frozen, in eval mode.

    Args:
        blip_dir: a local BLIP captioning folder (e.g. a snapshot of ``settings.captioner_model``).
        diffusion_dir: a local Stable Diffusion folder in the diffusers layout.
        device, dtype: where and in which precision the models run (fp16 on a GPU).

    Raises:
        SIGModelError: naming every missing file, or the package to install.
    """
    blip_dir, diffusion_dir = Path(blip_dir), Path(diffusion_dir)
    missing = missing_model_files(blip_dir, BLIP_FILES) + missing_model_files(diffusion_dir, SD_FILES)
    if missing:
        raise SIGModelError(
            "SIG model files missing (BLIP: a captioning checkpoint such as "
            f"{settings.captioner_model}; SD: {settings.diffusion_model} in the diffusers layout): "
            + "; ".join(missing))
    transformers = _import("transformers")
    diffusers = _import("diffusers")
    local = {"local_files_only": True}
    processor = transformers.BlipProcessor.from_pretrained(blip_dir, **local)
    blip = transformers.BlipForConditionalGeneration.from_pretrained(blip_dir, use_safetensors=True,
                                                                     torch_dtype=dtype, **local)
    sd = {"use_safetensors": True, "torch_dtype": dtype, **local}
    vae = diffusers.AutoencoderKL.from_pretrained(diffusion_dir, subfolder="vae", **sd)
    unet = diffusers.UNet2DConditionModel.from_pretrained(diffusion_dir, subfolder="unet", **sd)
    text_encoder = transformers.CLIPTextModel.from_pretrained(diffusion_dir, subfolder="text_encoder", **sd)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(diffusion_dir, subfolder="tokenizer", **local)
    scheduler = diffusers.DDIMScheduler.from_pretrained(diffusion_dir, subfolder="scheduler", **local)
    for module in (blip, vae, unet, text_encoder):
        module.to(device).eval().requires_grad_(False)
    captioner = BlipCaptioner(blip, processor, settings.caption_prompt, settings.max_new_tokens)
    return SIGComponents(captioner=captioner, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                         scheduler=scheduler)
