"""The Guidance type: what it accepts and the errors that name a wrong size, dtype or range."""

from __future__ import annotations

import pytest
import torch

from ivf_perception.guidance import Guidance, GuidanceError


def _guidance(batch: int = 2, height: int = 8, width: int = 12, tokens: int = 5, dim: int = 16) -> Guidance:
    mask = (torch.rand(batch, 1, height, width) > 0.5).float()
    return Guidance(mask=mask, text_tokens=torch.randn(batch, tokens, dim))


def test_valid_guidance_properties() -> None:
    g = _guidance()
    assert g.batch_size == 2 and g.text_dim == 16 and g.source == "explicit" and g.age_s == 0.0
    g.check_for(torch.zeros(2, 3, 8, 12), text_dim=16)


@pytest.mark.parametrize(("mask", "tokens", "message"), [
    (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 5, 16), "floating dtype"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 5, 16, dtype=torch.int64), "text_tokens: expected a floating"),
    (torch.zeros(2, 8, 8), torch.zeros(2, 5, 16), r"mask: expected B×1×H×W, got shape \(2, 8, 8\)"),
    (torch.zeros(2, 3, 8, 8), torch.zeros(2, 5, 16), "one channel"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(5, 16), r"text_tokens: expected B×L×d"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(3, 5, 16), "batch sizes differ"),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 0, 16), "at least one token"),
    (torch.full((2, 1, 8, 8), 255.0), torch.zeros(2, 5, 16), r"\[0, 1\], got \[255.0, 255.0\]"),
    (torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, 5, 16), r"\[0, 1\]"),
])
def test_construction_errors(mask: torch.Tensor, tokens: torch.Tensor, message: str) -> None:
    with pytest.raises(GuidanceError, match=message):
        Guidance(mask=mask, text_tokens=tokens)


def test_metadata_errors() -> None:
    with pytest.raises(GuidanceError, match="source must be one of"):
        Guidance(mask=torch.zeros(1, 1, 2, 2), text_tokens=torch.zeros(1, 1, 1), source="fallback")
    with pytest.raises(GuidanceError, match="age must be >= 0"):
        Guidance(mask=torch.zeros(1, 1, 2, 2), text_tokens=torch.zeros(1, 1, 1), age_s=-1.0)
    with pytest.raises(GuidanceError, match="expected a torch.Tensor"):
        Guidance(mask=[[0.0]], text_tokens=torch.zeros(1, 1, 1))  # type: ignore[arg-type]


def test_check_for_names_the_mismatch() -> None:
    g = _guidance()
    with pytest.raises(GuidanceError, match="batch of 2, the images are a batch of 1"):
        g.check_for(torch.zeros(1, 3, 8, 12))
    with pytest.raises(GuidanceError, match="mask is 8x12 but the images are 16x12"):
        g.check_for(torch.zeros(2, 3, 16, 12))
    with pytest.raises(GuidanceError, match="16-d but the network reads 32-d"):
        g.check_for(torch.zeros(2, 3, 8, 12), text_dim=32)


def test_padded_adds_background_and_aged_keeps_tensors() -> None:
    g = _guidance(batch=1, height=3, width=4)
    p = g.padded(2, 1)
    assert p.mask.shape == (1, 1, 5, 5)
    assert torch.equal(p.mask[..., :3, :4], g.mask) and p.mask[..., 3:, :].sum() == 0 and p.mask[..., 4:].sum() == 0
    assert g.padded(0, 0) is g
    a = g.aged(0.25, "async")
    assert a.age_s == 0.25 and a.source == "async" and a.mask is g.mask
    h = g.to(dtype=torch.float16)
    assert h.mask.dtype == torch.float16 and h.text_tokens.dtype == torch.float16
