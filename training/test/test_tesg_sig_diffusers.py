"""The SIG's real path with transformers and diffusers (the ``tesg-sig`` extra), when installed.

Skipped where the extra is absent (the project venv). Where it is installed, tiny *randomly
initialised* BLIP and Stable Diffusion components are written with ``save_pretrained`` (no hub,
no real weights) and checked:

* :func:`load_sig_components` reads both folders and the generator runs end to end on them;
* our DiffEdit mask equals ``StableDiffusionDiffEditPipeline.generate_mask`` on the same
  components, prompts and seed (the reference the spec names), up to pixels whose normalised
  map lies at the threshold within float noise (batches of 3 vs 4 UNet passes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from ivf_training.sig import (  # noqa: E402
    SemanticInformationGenerator,
    SIGSettings,
    encode_text,
    guidance_map,
    mask_from_guidance_map,
)
from ivf_training.sig.loaders import load_sig_components  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _clip_tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges) written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _stable_diffusion(folder: Path) -> None:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  latent_channels=4, norm_num_groups=8)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=60, max_position_embeddings=16))
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    _clip_tokenizer(folder / "tokenizer").save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")


def _blip(folder: Path) -> None:
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photograph", "of", "man", "car", "street"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=5, sep_token_id=3,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8))
    model = transformers.BlipForConditionalGeneration(config)
    processor = transformers.BlipProcessor(transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
                                           tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sig_models")
    _stable_diffusion(root / "sd")
    _blip(root / "blip")
    return root / "blip", root / "sd"


SETTINGS = SIGSettings(num_maps_per_mask=3, num_inference_steps=10, max_side=64, size_multiple=32,
                       caption_prompt="a photograph of", max_new_tokens=4)


def test_loaders_read_save_pretrained_folders_and_the_generator_runs(folders: tuple[Path, Path]) -> None:
    components = load_sig_components(*folders, SETTINGS)
    rng = np.random.default_rng(0)
    rgb, thermal = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.random((40, 56), dtype=np.float32)
    out = SemanticInformationGenerator(components, SETTINGS)(rgb, thermal)
    assert out.caption.startswith("a photograph of")
    assert out.mask.shape == (40, 56) and out.text_tokens.shape == (16, 32)


def test_mask_equals_diffusers_generate_mask(folders: tuple[Path, Path]) -> None:
    c = load_sig_components(*folders, SETTINGS)
    pipe = diffusers.StableDiffusionDiffEditPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(c.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    torch.manual_seed(1)
    image = torch.rand(1, 3, 64, 64)
    source, target = "a man on a street", "a on a street"
    reference = pipe.generate_mask(image=image, source_prompt=source, target_prompt=target, num_maps_per_mask=3,
                                   mask_encode_strength=0.5, mask_thresholding_ratio=3.0, num_inference_steps=10,
                                   guidance_scale=7.5, generator=torch.Generator().manual_seed(7), output_type="np")
    texts = encode_text(c.tokenizer, c.text_encoder, [source, target, ""])
    g = guidance_map(c.vae, c.unet, c.scheduler, image, texts[0:1], texts[1:2], texts[2:3], num_maps=3,
                     strength=0.5, num_inference_steps=10, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(7))
    ours = mask_from_guidance_map(g).numpy()
    reference = np.asarray(reference)[0].astype(bool)
    assert ours.shape == reference.shape
    scale = 3.0 * float(g.mean())
    near_threshold = np.abs(g.numpy() / scale - 0.5) < 1e-4
    assert np.array_equal(ours[~near_threshold], reference[~near_threshold])
    assert np.array_equal(ours, reference)  # measured: no pixel at the threshold in this case
    assert 0 < ours.sum() < ours.size
