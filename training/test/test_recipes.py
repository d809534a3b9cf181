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
