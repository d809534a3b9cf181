"""The guidance cache: round trip, keys, and the named errors for missing, stale or bad entries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ivf_perception.guidance import (
    GuidanceCache,
    GuidanceCacheError,
    GuidanceNotCachedError,
    StaleGuidanceError,
    pair_key,
    settings_hash,
)

SETTINGS = {"captioner": "Salesforce/blip-image-captioning-base", "num_maps_per_mask": 10,
            "mask_thresholding_ratio": 3.0, "keywords": ["car", "person"]}


def _pair(seed: int = 0, height: int = 6, width: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    thermal = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    return rgb, thermal


def test_pair_key_depends_on_content_dtype_and_shape() -> None:
    rgb, thermal = _pair()
    key = pair_key(rgb, thermal)
    assert len(key) == 64 and key == pair_key(rgb.copy(), thermal.copy())
    changed = thermal.copy()
    changed[0, 0] ^= 1
    assert pair_key(rgb, changed) != key
    assert pair_key(rgb, thermal.astype(np.int32)) != key
    assert pair_key(rgb, thermal.reshape(10, 6)) != key
    assert pair_key(rgb[:, ::-1], thermal) != key  # non-contiguous view hashed by content
    with pytest.raises(GuidanceCacheError, match="decoded numpy image"):
        pair_key(torch.zeros(6, 10, 3), thermal)  # type: ignore[arg-type]


def test_settings_hash_ignores_key_order_and_refuses_non_json() -> None:
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})
    with pytest.raises(GuidanceCacheError, match="plain JSON data"):
        settings_hash({"a": object()})


def test_round_trip(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    mask = torch.zeros(6, 10)
    mask[1:4, 2:7] = 1.0
    tokens = torch.randn(77, 32)
    cache = GuidanceCache(tmp_path / "cache", SETTINGS)
    key = cache.write(rgb, thermal, mask=mask, text_tokens=tokens, caption="a car on a road",
                      edited_caption="a on a road", removed_keywords=["car"],
                      masks={"mask_vis": mask, "mask_ir": torch.zeros(1, 6, 10)})
    assert key == pair_key(rgb, thermal) and key in cache and cache.has(rgb, thermal) and cache.keys() == [key]

    reader = GuidanceCache(tmp_path / "cache")  # replay: settings come from the cache
    assert reader.settings == SETTINGS and reader.settings_hash == settings_hash(SETTINGS)
    entry = reader.read(rgb, thermal)
    assert torch.equal(entry.mask, mask[None]) and entry.mask.dtype == torch.float32
    assert entry.text_tokens.dtype == torch.float32
    torch.testing.assert_close(entry.text_tokens, tokens.half().float(), rtol=0, atol=0)  # stored as float16
    assert (entry.caption, entry.edited_caption, entry.removed_keywords, entry.no_keyword) == (
        "a car on a road", "a on a road", ("car",), False)
    assert sorted(entry.masks) == ["mask_ir", "mask_vis"] and torch.equal(entry.masks["mask_vis"], mask[None])
    g = entry.guidance()
    assert g.source == "cache" and g.mask.shape == (1, 1, 6, 10) and g.text_tokens.shape == (1, 77, 32)


def test_no_keyword_flag_round_trips(tmp_path: Path) -> None:
    rgb, thermal = _pair(1)
    cache = GuidanceCache(tmp_path, SETTINGS)
    cache.write(rgb, thermal, mask=torch.zeros(6, 10), text_tokens=torch.zeros(4, 8), caption="a dark road",
                edited_caption="a dark road", no_keyword=True)
    entry = cache.read(rgb, thermal)
    assert entry.no_keyword and entry.mask.sum() == 0


def test_missing_entry_is_named(tmp_path: Path) -> None:
    cache = GuidanceCache(tmp_path, SETTINGS)
    rgb, thermal = _pair()
    cache.write(rgb, thermal, mask=torch.zeros(6, 10), text_tokens=torch.zeros(4, 8))
    other = _pair(2)
    with pytest.raises(GuidanceNotCachedError, match="no guidance for image pair .*tesg-guidance"):
        cache.read(*other)
    assert not cache.has(*other)


def test_other_settings_are_stale_never_mixed(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, mask=torch.zeros(6, 10), text_tokens=torch.zeros(4, 8))
    with pytest.raises(StaleGuidanceError, match=r"other generator settings \(num_maps_per_mask: 10 -> 5\)"):
        GuidanceCache(tmp_path, {**SETTINGS, "num_maps_per_mask": 5})
    # an entry copied in from a cache with other settings is refused when read
    entry_json = next((tmp_path / "entries").glob("*/*.json"))
    record = json.loads(entry_json.read_text())
    record["settings_hash"] = settings_hash({"other": 1})
    entry_json.write_text(json.dumps(record))
    with pytest.raises(StaleGuidanceError, match="made with other generator settings"):
        GuidanceCache(tmp_path).read(rgb, thermal)


def test_existing_entry_needs_overwrite(tmp_path: Path) -> None:
    rgb, thermal = _pair()
    cache = GuidanceCache(tmp_path, SETTINGS)
    cache.write(rgb, thermal, mask=torch.zeros(6, 10), text_tokens=torch.zeros(4, 8))
    with pytest.raises(GuidanceCacheError, match="overwrite=True"):
        cache.write(rgb, thermal, mask=torch.ones(6, 10), text_tokens=torch.zeros(4, 8))
    cache.write(rgb, thermal, mask=torch.ones(6, 10), text_tokens=torch.zeros(4, 8), overwrite=True)
    assert cache.read(rgb, thermal).mask.min() == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mask": torch.zeros(5, 10), "text_tokens": torch.zeros(4, 8)}, r"expected a 6x10 mask"),
    ({"mask": torch.zeros(6, 10, dtype=torch.uint8), "text_tokens": torch.zeros(4, 8)}, "floating mask"),
    ({"mask": torch.full((6, 10), 2.0), "text_tokens": torch.zeros(4, 8)}, r"\[0, 1\]"),
    ({"mask": torch.zeros(6, 10), "text_tokens": torch.zeros(1, 4, 8)}, "floating L×d"),
    ({"mask": torch.zeros(6, 10), "text_tokens": torch.full((4, 8), float("nan"))}, "non-finite"),
    ({"mask": torch.zeros(6, 10), "text_tokens": torch.zeros(4, 8), "masks": {"mask": torch.zeros(6, 10)}}, "reserved"),
])
def test_write_refuses_bad_guidance(tmp_path: Path, kwargs: dict, message: str) -> None:
    rgb, thermal = _pair()
    with pytest.raises(GuidanceCacheError, match=message):
        GuidanceCache(tmp_path, SETTINGS).write(rgb, thermal, **kwargs)
    assert not (tmp_path / "entries").exists()


def test_unreadable_caches_are_named(tmp_path: Path) -> None:
    with pytest.raises(GuidanceCacheError, match="not a guidance cache .*tesg-guidance"):
        GuidanceCache(tmp_path)
    (tmp_path / "cache.json").write_text("{not json")
    with pytest.raises(GuidanceCacheError, match="unreadable guidance cache index"):
        GuidanceCache(tmp_path)
    (tmp_path / "cache.json").write_text(json.dumps({"format": "other", "settings": {}}))
    with pytest.raises(GuidanceCacheError, match="not a ivf-tesg-guidance-1"):
        GuidanceCache(tmp_path)
    good = tmp_path / "good"
    rgb, thermal = _pair()
    GuidanceCache(good, SETTINGS).write(rgb, thermal, mask=torch.zeros(6, 10), text_tokens=torch.zeros(4, 8))
    next((good / "entries").glob("*/*.safetensors")).write_bytes(b"truncated")
    with pytest.raises(GuidanceCacheError, match="guidance entry .*corrupt or truncated"):
        GuidanceCache(good).read(rgb, thermal)
    with pytest.raises(GuidanceCacheError, match="64 hex digits"):
        GuidanceCache(good).read_key("../../etc/passwd")
