"""Registry behaviour (timm-style)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from base_tester import package_models

from ivf_perception.models import UnknownModelError, build_model, list_models, list_presets, register_model, registry


def test_lists_registered_families() -> None:
    assert "s4fusion" in list_models()
    assert list_models("test_*") == [n for n in list_models() if n.startswith("test_")]


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"Unknown model \(nope\).*s4fusion"):
        build_model("nope")


def test_none_overrides_do_not_replace_defaults() -> None:
    a = build_model("test_s4fusion", num_classes=None, preset=None, scan_backend=None)
    assert a.num_classes == 9


def test_overwriting_warns_and_registered_defaults_are_not_mutated() -> None:
    calls = []

    def _probe_model(dims=(1, 2), **kw):
        calls.append((list(dims), kw))
        return None

    register_model(_probe_model)
    try:
        with pytest.warns(UserWarning, match="Overwriting _probe_model"):
            register_model(_probe_model)
        shared = [4, 8]
        registry.model_entrypoint("_probe_model")
        build_model("_probe_model", dims=shared)
        shared.append(16)
        build_model("_probe_model")
        assert calls[0][0] == [4, 8] and calls[1][0] == [1, 2]
    finally:
        registry._MODEL_ENTRYPOINTS.pop("_probe_model", None)


def test_every_listed_preset_builds_and_no_other() -> None:
    for name in package_models():
        for preset in list_presets(name):
            assert build_model(name, preset=preset, device="meta").preset == preset
    with pytest.raises(ValueError, match="Unknown CMFS preset 'tiny'"):
        build_model("cmfs", preset="tiny", device="meta")
    assert "tiny" not in list_presets("cmfs") and list_presets("mafs", include_test=False) == ("paper", "small", "tiny")


def test_presets_are_declared_at_registration() -> None:
    def _probe_presets_model(preset: str = "a", **kw):
        return preset

    register_model(presets=("a", "b", registry.TEST_PRESET))(_probe_presets_model)
    try:
        assert list_presets("_probe_presets_model") == ("a", "b", "test")
        assert list_presets("_probe_presets_model", include_test=False) == ("a", "b")
        with pytest.raises(UnknownModelError, match=r"Unknown model \(nope\)"):
            list_presets("nope")
    finally:
        registry._MODEL_ENTRYPOINTS.pop("_probe_presets_model", None)
        registry._MODEL_PRESETS.pop("_probe_presets_model", None)


def test_readme_variant_table_and_help_name_each_familys_presets() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| (.*?) \| ", readme, flags=re.MULTILINE))
    for name in package_models():
        assert name in table, f"README variant table has no row for {name}"
        listed = tuple(re.findall(r"`(\w+)`", table[name]))
        expected = (registry.TEST_PRESET,) if name.startswith("test_") else list_presets(name, include_test=False)
        assert listed == expected, (name, listed)
    assert "cmfs: paper, small;" in registry.describe_presets()


def test_registry_is_a_leaf() -> None:
    """timm's layout: the registry imports no family (the package imports them), so there is no
    import circle registry -> families -> registry."""
    source = Path(registry.__file__).read_text()
    assert not re.search(r"^\s*(from|import) ivf_perception\.models\.(?!registry)", source, flags=re.MULTILINE)
    assert not re.search(r"^\s*from ivf_perception\.models import", source, flags=re.MULTILINE)
