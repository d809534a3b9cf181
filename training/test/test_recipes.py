"""Every shipped recipe loads, validates and names a registered variant; every variant has a
CPU recipe on generated scenes and a paper-settings recipe per labelled benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivf_perception.models import is_model, list_models
from ivf_training.config import load_config

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
BENCHMARKS = ("mfnet", "msrs", "pst900", "fmb")


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_loads_and_names_a_registered_variant(recipe: str) -> None:
    cfg = load_config(RECIPES / recipe)
    assert is_model(cfg.model.variant), cfg.model.variant
    kind = recipe.removesuffix(".yaml").rsplit("_", 1)[-1]
    if kind in BENCHMARKS:
        assert cfg.data.kind == kind
    if "generated" in recipe:
        assert cfg.data.generated.train_count > 0 and cfg.max_steps is not None


@pytest.mark.parametrize("variant", [v for v in list_models() if not v.startswith("test_")])
def test_every_variant_has_generated_and_benchmark_recipes(variant: str) -> None:
    names = {p.stem for p in RECIPES.glob(f"{variant}_*.yaml")}
    assert any("generated" in n for n in names), f"{variant}: no generated-scenes recipe"
    for kind in BENCHMARKS:
        assert any(n.endswith(f"_{kind}") for n in names), f"{variant}: no {kind} recipe"


@pytest.mark.parametrize("kind", BENCHMARKS)
def test_s4fusion_paper_recipes_use_the_paper_settings(kind: str) -> None:
    """Issue 15: the S4Fusion benchmark recipes train the public architecture with the paper's
    loss (ResNet-50 ω weights, α = β = γ = 15, the public Sobel, no texture term), its
    augmentation (crop + flip, no rescaling) and no gradient clipping; 228 px crops give the
    public code's 76×76 token grid (it crops 229 without padding)."""
    from ivf_perception.models import build_model

    cfg = load_config(RECIPES / f"s4fusion_{kind}.yaml")
    loss = cfg.loss
    assert cfg.model.preset == "paper"
    assert (loss.source_weights, loss.ssim, loss.gradient, loss.gradient_sobel, loss.perception,
            loss.perception_texture, loss.intensity) == ("resnet", 15.0, 15.0, "raw", 15.0, 0.0, 1.0)
    assert loss.resnet50_weights is not None
    assert tuple(cfg.data.scale_range) == (1.0, 1.0) and cfg.data.hflip and cfg.optim.grad_clip is None
    model = build_model("s4fusion", preset="paper", num_classes=0, device="meta")
    assert cfg.crop % model.input_multiple == 0 and cfg.crop // 3 == 76


@pytest.mark.parametrize("recipe", ["s4fusion_generated", "s4fusion_generated_finetune", "s4fusion_finetune_bag"])
def test_s4fusion_cpu_recipes_keep_our_switches(recipe: str) -> None:
    """The recipes of the bundled weights keep the loss they were trained with."""
    loss = load_config(RECIPES / f"{recipe}.yaml").loss
    assert (loss.source_weights, loss.gradient_sobel) == ("max", "normalized")
