"""Generated scenes through build_dataset: determinism, classes, options."""

from __future__ import annotations

import pytest
import torch

from ivf_perception.io.errors import DatasetError
from ivf_perception.scenes import VARIETY, SceneConfig, generate_scene
from ivf_training.datasets import GeneratedScenesDataset, build_dataset, describe_dataset


def test_generated_scenes_by_kind() -> None:
    ds = build_dataset("generated", count=2, start=40, config={"height": 64, "width": 80})
    assert isinstance(ds, GeneratedScenesDataset) and len(ds) == 2
    a, b = ds[1], GeneratedScenesDataset(1, {"height": 64, "width": 80}, start=41)[0]
    assert a["name"] == b["name"] == "scene_0000041"
    assert all(torch.equal(a[k], b[k]) for k in ("rgb", "thermal", "labels"))
    assert a["labels"].shape == (64, 80) and int(a["labels"].max()) < 9
    assert describe_dataset(ds)["kind"] == "generated"


def test_generated_scene_options_are_checked() -> None:
    with pytest.raises(DatasetError, match="generated scenes have no root or split"):
        build_dataset("generated", "some/folder", count=2)
    with pytest.raises(DatasetError, match="unknown option\\(s\\) height for dataset kind 'generated'; "
                                           "accepted: count, config, start"):
        build_dataset("generated", count=2, height=48)


def test_recipe_scene_mapping_turns_on_variety() -> None:
    """A recipe's ``data.generated.scene`` reaches SceneConfig: the variety options included."""
    options = {"height": 64, "width": 80, "seed": 2, **VARIETY}
    ds = build_dataset("generated", count=1, start=5, config=options)
    assert isinstance(ds, GeneratedScenesDataset) and ds.config.vignetting == VARIETY["vignetting"]
    scene = generate_scene(5, SceneConfig(**options))
    plain = GeneratedScenesDataset(1, {"height": 64, "width": 80, "seed": 2}, start=5)[0]
    rgb = torch.from_numpy(scene.rgb).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(ds[0]["rgb"], rgb) and not torch.equal(ds[0]["rgb"], plain["rgb"])
