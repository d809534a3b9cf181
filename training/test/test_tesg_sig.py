"""TeSG's Semantic Information Generator (spec §2.1, §5.3): keyword removal, the DiffEdit mask
rule, the generator over tiny random components, settings, and the real loaders' file checks.

The diffusion and captioning models are test doubles (``sig_doubles``): transformers/diffusers
and the BLIP/SD weights are not available here. The mask *rule* is checked exactly with a fake
noise predictor whose noise difference is known.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sig_doubles import TinyDDIM, TinyVAE, tiny_components
from torch import nn

from ivf_perception.guidance import settings_hash
from ivf_training.sig import (
    KeywordVocabulary,
    SemanticInformationGenerator,
    SIGSettings,
    SIGSettingsError,
    diffedit_mask,
    encode_timestep,
    load_sig_settings,
    mask_from_guidance_map,
    plural,
    remove_keywords,
    sig_input_size,
)
from ivf_training.sig.loaders import SIGModelError, load_sig_components

# ---------------------------------------------------------------------------------------------
# keyword removal


@pytest.fixture(scope="module")
def mfnet() -> KeywordVocabulary:
    return KeywordVocabulary.for_dataset("mfnet")


def test_plurals() -> None:
    assert [plural(w) for w in ("car", "bus", "person", "man", "lady", "traffic cone", "bench")] == \
        ["cars", "buses", "people", "men", "ladies", "traffic cones", "benches"]


def test_removes_all_occurrences_plurals_and_synonyms(mfnet: KeywordVocabulary) -> None:
    r = remove_keywords("a photograph of two men and a woman walking past parked cars and a car", mfnet)
    assert r.removed == ("men", "woman", "cars", "car")
    assert r.query == "a photograph of two and a walking past parked and a"
    assert r.found


def test_longest_phrase_first_case_and_word_boundaries(mfnet: KeywordVocabulary) -> None:
    r = remove_keywords("A Traffic Cone beside a carpet, a scarf and a Pedestrian.", mfnet)
    assert r.removed == ("Traffic Cone", "Pedestrian")
    assert r.query == "A beside a carpet, a scarf and a."  # 'carpet'/'scarf' contain 'car' but are kept


def test_no_keyword_leaves_caption(mfnet: KeywordVocabulary) -> None:
    r = remove_keywords("a photograph of a dark street at night", mfnet)
    assert (r.query, r.removed, r.found) == (r.caption, (), False)


def test_stuff_classes_are_not_keywords() -> None:
    fmb = KeywordVocabulary.for_dataset("fmb")
    assert "road" not in fmb.classes and "person" in fmb.classes
    assert remove_keywords("a bus on the road under the sky", fmb).query == "a on the road under the sky"
    pst = KeywordVocabulary.for_dataset("pst900")
    assert remove_keywords("a fire extinguisher next to a backpack", pst).removed == ("fire extinguisher", "backpack")


def test_vocabulary_errors() -> None:
    with pytest.raises(ValueError, match="no class table named 'kitti'"):
        KeywordVocabulary.for_dataset("kitti")
    with pytest.raises(ValueError, match="class 'forklift' has no keyword list"):
        KeywordVocabulary.for_classes(["forklift"])
    v = KeywordVocabulary.for_classes(["forklift"], {"forklift": ["forklift", "lift truck"]})
    assert remove_keywords("two lift trucks", v).query == "two"


# ---------------------------------------------------------------------------------------------
# the mask rule


def test_mask_rule_on_hand_values() -> None:
    g = torch.tensor([[0.0, 1.0], [2.0, 9.0]])  # mean 3, clamp at 9: g/9 > 0.5 ⇔ g > 4.5
    assert mask_from_guidance_map(g).tolist() == [[False, False], [False, True]]
    assert mask_from_guidance_map(g, ratio=1.0).tolist() == [[False, False], [True, True]]  # g/3 > .5
    assert not mask_from_guidance_map(torch.zeros(3, 4)).any()  # T̂ = T: no foreground, no 0/0


class FakeNoisePredictor(nn.Module):
    """ε(z, t, c) = 0.3·z + code(c)·P: the noise difference between two prompts is
    (code(T̂) − code(T))·P whatever the noise draw, so the mask is known in advance."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pattern", pattern)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        code = encoder_hidden_states[:, 0, 0].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=0.3 * x + code * self.pattern)


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_diffedit_mask_with_fake_noise_predictor(guidance_scale: float) -> None:
    torch.manual_seed(0)
    pattern = torch.rand(4, 8, 8) * torch.tensor([1.0, 1.0, 1.0, 1.0]).view(4, 1, 1)
    unet = FakeNoisePredictor(pattern)
    emb = {name: torch.full((1, 3, 5), value) for name, value in (("T", 1.0), ("T_hat", 3.0), ("empty", 0.0))}
    mask = diffedit_mask(TinyVAE(), unet, TinyDDIM(), torch.rand(1, 3, 32, 32), emb["T"], emb["T_hat"],
                         emb["empty"], num_maps=3, guidance_scale=guidance_scale,
                         generator=torch.Generator().manual_seed(1))
    scale = guidance_scale if guidance_scale > 1 else 1.0
    g = (scale * 2.0 * pattern).abs().mean(0)  # |ε̃(T̂) − ε̃(T)| averaged over channels and draws
    expected = (g.clamp(0, 3 * g.mean()) / (3 * g.mean())) > 0.5
    assert mask.shape == (8, 8) and mask.dtype == torch.bool
    assert torch.equal(mask, expected)
    assert 0 < int(mask.sum()) < 64


def test_same_prompt_gives_empty_mask() -> None:
    unet = FakeNoisePredictor(torch.rand(4, 8, 8))
    same = torch.ones(1, 3, 5)
    mask = diffedit_mask(TinyVAE(), unet, TinyDDIM(), torch.rand(1, 3, 32, 32), same, same, torch.zeros(1, 3, 5),
                         num_maps=2)
    assert not mask.any()


def test_encode_timestep_follows_diffusers_get_timesteps() -> None:
    # 50 steps at strength 0.5: index 50 - 25 = 25 of [981, 961, ..., 1] → 481 (spec §2.1: "≈ t = 480-500")
    assert int(encode_timestep(TinyDDIM(), 50, 0.5)) == 481
    assert int(encode_timestep(TinyDDIM(), 50, 1.0)) == 981
    assert int(encode_timestep(TinyDDIM(), 10, 0.25)) == 101  # int(2.5) = 2 kept steps: index 8 of [901 .. 1]


# ---------------------------------------------------------------------------------------------
# the generator over tiny random components


def _pair(h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.random((h, w), dtype=np.float32)


SMALL = SIGSettings(num_maps_per_mask=2, num_inference_steps=10, max_side=64, size_multiple=16)


def test_generator_outputs_and_union() -> None:
    sig = SemanticInformationGenerator(tiny_components(caption="a man next to a car on a street"), SMALL)
    rgb, thermal = _pair()
    out = sig(rgb, thermal)
    assert out.removed == ("man", "car") and out.query == "a next to a on a street"
    for m in (out.mask_vis, out.mask_ir, out.mask):
        assert m.shape == (40, 56) and m.dtype == torch.bool
    assert torch.equal(out.mask, out.mask_vis | out.mask_ir)
    assert out.text_tokens.shape == (8, 12) and out.text_tokens.dtype == torch.float16
    assert out.flags in ([], ["empty_mask"])
    again = sig(rgb, thermal)  # seeded per image: the same guidance every time
    assert torch.equal(again.mask, out.mask) and torch.equal(again.text_tokens, out.text_tokens)


def test_generator_text_tokens_are_the_encoder_tokens_of_the_caption() -> None:
    comps = tiny_components(caption="two people at night")
    out = SemanticInformationGenerator(comps, SMALL)(*_pair())
    ids = comps.tokenizer(["two people at night"], max_length=8).input_ids
    expected = comps.text_encoder(ids)[0][0].half()
    assert torch.equal(out.text_tokens, expected)


def test_generator_no_keyword_is_flagged_with_empty_mask() -> None:
    out = SemanticInformationGenerator(tiny_components(caption="a dark street at night"), SMALL)(*_pair())
    assert out.flags == ["no_keyword"] and out.query == out.caption
    assert not out.mask.any() and out.mask.shape == (40, 56)
    assert out.text_tokens.shape == (8, 12)  # the text still guides the fusion


def test_generator_with_tiny_blip_captioner() -> None:
    out = SemanticInformationGenerator(tiny_components(), SMALL)(*_pair())
    assert out.caption.startswith("a photograph of")


def test_generator_refuses_unregistered_pair() -> None:
    sig = SemanticInformationGenerator(tiny_components(caption="a car"), SMALL)
    rgb, _ = _pair()
    with pytest.raises(ValueError, match="registered"):
        sig(rgb, np.zeros((10, 10), np.uint8))


def test_sig_input_size() -> None:
    assert sig_input_size(480, 640, 768, 64) == (512, 640)
    assert sig_input_size(1024, 1280, 768, 64) == (640, 768)  # 614.4 → nearest multiple of 64
    assert sig_input_size(20, 30, 768, 64) == (64, 64)


# ---------------------------------------------------------------------------------------------
# settings and loaders


def test_settings_hash_and_file(tmp_path) -> None:
    base = settings_hash(SIGSettings().to_dict())
    assert settings_hash(SIGSettings(mask_threshold=0.4).to_dict()) != base
    assert settings_hash(SIGSettings(keyword_extra={"car": ("lorry",)}).to_dict()) != base
    f = tmp_path / "sig.yaml"
    f.write_text("num_maps_per_mask: 4\nkeyword_classes: [car, person]\n")
    s = load_sig_settings(f, {"seed": 3})
    assert (s.num_maps_per_mask, s.keyword_classes, s.seed) == (4, ("car", "person"), 3)
    with pytest.raises(SIGSettingsError, match="unknown key.*num_maps"):
        load_sig_settings(None, {"num_maps": 2})
    with pytest.raises(SIGSettingsError, match="mask_threshold"):
        SIGSettings(mask_threshold=1.5)
    with pytest.raises(SIGSettingsError, match="not found"):
        load_sig_settings(tmp_path / "none.yaml")


def test_loader_names_every_missing_file(tmp_path) -> None:
    blip, sd = tmp_path / "blip", tmp_path / "sd"
    (blip).mkdir()
    (blip / "config.json").write_text("{}")
    with pytest.raises(SIGModelError) as err:
        load_sig_components(blip, sd, SIGSettings())
    text = str(err.value)
    assert "config.json" in text and str(blip / "preprocessor_config.json") in text
    assert str(blip / "model.safetensors") in text and str(sd / "unet/diffusion_pytorch_model.safetensors") in text
    assert str(sd / "text_encoder/model.safetensors") in text and str(sd / "scheduler/scheduler_config.json") in text
    assert str(blip / "config.json") + ";" not in text  # present files are not listed


def test_loader_names_the_package_to_install(tmp_path, monkeypatch) -> None:
    from ivf_training.sig import loaders

    blip, sd = tmp_path / "blip", tmp_path / "sd"
    for folder, files in ((blip, loaders.BLIP_FILES), (sd, loaders.SD_FILES)):
        for alternatives in files:
            (folder / alternatives[0]).parent.mkdir(parents=True, exist_ok=True)
            (folder / alternatives[0]).write_text("{}")

    def no_module(name: str) -> None:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(loaders.importlib, "import_module", no_module)  # as on a machine without the extra
    with pytest.raises(SIGModelError, match=r"'transformers'.*pip install 'ivf-perception-training\[tesg-sig\]'"):
        load_sig_components(blip, sd, SIGSettings())
