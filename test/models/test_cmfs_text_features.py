"""CLIP text features of CMFS's class prompts: prompts, random tower, files, cache and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ivf_perception.models import build_model
from ivf_perception.models.cmfs.text_features import (
    TextFeaturesError,
    compute_text_features,
    load_text_features,
    prompts_for,
    save_text_features,
    text_features_for,
)

pytest.importorskip("open_clip", reason="open_clip_torch is a dev requirement (requirements/dev.txt)")

CLASSES = ["car", "person", "car_stop"]


def test_prompts_follow_the_paper() -> None:
    assert prompts_for(CLASSES) == ["the photo of a car", "the photo of a person", "the photo of a car stop"]
    with pytest.raises(TextFeaturesError):
        prompts_for([])


@pytest.fixture(scope="module")
def random_features() -> torch.Tensor:
    return compute_text_features(CLASSES, "random")


def test_random_text_tower_is_seeded_and_distinguishes_prompts(random_features: torch.Tensor) -> None:
    assert random_features.shape == (3, 512) and random_features.dtype == torch.float32
    again = compute_text_features(CLASSES, "random")
    torch.testing.assert_close(again, random_features)
    cos = torch.nn.functional.cosine_similarity(random_features[0], random_features[1], dim=0)
    assert float(cos) < 0.9999


def test_feature_file_round_trip_and_prompt_check(tmp_path: Path, random_features: torch.Tensor) -> None:
    path = save_text_features(tmp_path / "mfnet.safetensors", random_features, CLASSES, source="random")
    torch.testing.assert_close(load_text_features(path, CLASSES), random_features)
    with pytest.raises(TextFeaturesError, match="was made for prompts"):
        load_text_features(path, ["car", "person", "bike"])
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(TextFeaturesError, match="cannot read CLIP text features"):
        load_text_features(tmp_path / "bad.safetensors")


def test_cache_is_written_once_and_reused(tmp_path: Path, random_features: torch.Tensor) -> None:
    first = text_features_for(CLASSES, clip_weights="random", cache_dir=tmp_path)
    cached = list(tmp_path.glob("clip_text_*.safetensors"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    second = text_features_for(CLASSES, clip_weights="random", cache_dir=tmp_path)
    assert cached[0].stat().st_mtime_ns == mtime
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, random_features)


def test_missing_sources_say_what_to_provide(tmp_path: Path) -> None:
    with pytest.raises(TextFeaturesError, match="Provide one of: a precomputed feature file"):
        text_features_for(CLASSES)
    with pytest.raises(TextFeaturesError, match="CLIP weights not found"):
        text_features_for(CLASSES, clip_weights=tmp_path / "open_clip_model.safetensors")
    with pytest.raises(TextFeaturesError, match="not found"):
        text_features_for(CLASSES, features_file=tmp_path / "none.safetensors")


def test_clip_weights_file_is_loaded_without_unpickling(tmp_path: Path) -> None:
    """A state dict saved from the (random) tower reproduces the random tower's features."""
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    from_file = compute_text_features(CLASSES, path)
    tokens = open_clip.get_tokenizer("ViT-B-32")(prompts_for(CLASSES))
    with torch.no_grad():
        expected = clip.eval().encode_text(tokens)
    torch.testing.assert_close(from_file, expected)
    truncated = tmp_path / "visual_only.pt"
    torch.save({k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}, truncated)
    with pytest.raises(TextFeaturesError, match="lack text-tower tensors"):
        compute_text_features(CLASSES, truncated)


def test_model_takes_features_from_a_file_and_checks_their_shape(tmp_path: Path,
                                                                 random_features: torch.Tensor) -> None:
    model = build_model("test_cmfs", num_classes=4)  # 3 prompts: every class but 0
    assert not model.has_text_features
    path = save_text_features(tmp_path / "f.safetensors", random_features, CLASSES, source="random")
    model.set_text_features(path)
    assert model.has_text_features
    torch.testing.assert_close(model.text_features, random_features)
    with pytest.raises(ValueError, match=r"shape \(3, 512\)"):
        model.set_text_features(torch.zeros(5, 512))
    # the features travel with the weights: a fresh model gets them from the state dict
    fresh = build_model("test_cmfs", num_classes=4)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.text_features, random_features)
