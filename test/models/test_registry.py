"""Registry behaviour (timm-style)."""

from __future__ import annotations

import pytest

from ivf_perception.models import UnknownModelError, build_model, list_models, register_model
from ivf_perception.models import registry


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
