"""Joint augmentation keeps RGB, thermal and labels aligned and is deterministic."""

from __future__ import annotations

import pytest
import torch

from ivf_training.augment import IGNORE_INDEX, JointAugment, pad_to, resize_sample

K = 6


def _block_sample(h: int = 48, w: int = 64, block: int = 8) -> dict:
    """Blocks of constant class; rgb, thermal encode the class: label = f(pixel)."""
    ys = torch.arange(h)[:, None] // block
    xs = torch.arange(w)[None, :] // block
    labels = (ys * 7 + xs * 3) % K
    value = labels.float() / (K - 1)
    rgb = torch.stack((value, 1 - value, torch.full_like(value, 0.5)))
    thermal = value[None] * 0.5 + 0.25
    return {"rgb": rgb, "thermal": thermal, "labels": labels.long(), "name": "blocks"}


def _decode(value: torch.Tensor) -> torch.Tensor:
    return torch.round(value * (K - 1)).long()


def _interior(labels: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3×3 neighbourhood has one label (away from resampled borders)."""
    lab = labels.float()[None, None]
    mx = torch.nn.functional.max_pool2d(lab, 3, 1, 1)
    mn = -torch.nn.functional.max_pool2d(-lab, 3, 1, 1)
    return (mx == mn)[0, 0]


def test_alignment_without_rescaling() -> None:
    aug = JointAugment(32, scale_range=(1.0, 1.0), hflip=True)
    for seed in range(6):
        out = aug(_block_sample(), torch.Generator().manual_seed(seed))
        assert (out["rgb"].shape == (3, 32, 32) and out["thermal"].shape == (1, 32, 32)
                and out["labels"].shape == (32, 32))
        assert torch.equal(_decode(out["rgb"][0]), out["labels"])
        assert torch.equal(_decode((out["thermal"][0] - 0.25) * 2), out["labels"])


@pytest.mark.parametrize("seed", range(5))
def test_alignment_with_random_scale_and_flip(seed: int) -> None:
    aug = JointAugment(40, scale_range=(0.6, 1.8), hflip=True)
    out = aug(_block_sample(), torch.Generator().manual_seed(seed))
    labels = out["labels"]
    valid = (labels != IGNORE_INDEX) & _interior(labels)
    assert valid.sum() > 100
    assert torch.equal(_decode(out["rgb"][0])[valid], labels[valid])
    assert torch.equal(_decode((out["thermal"][0] - 0.25) * 2)[valid], labels[valid])


def test_flip_mirrors_every_array() -> None:
    sample = _block_sample(48, 48)
    aug = JointAugment(48, scale_range=(1.0, 1.0), hflip=True)  # crop = whole image: only the flip varies
    outcomes = set()
    for seed in range(10):
        out = aug(sample, torch.Generator().manual_seed(seed))
        flipped = not torch.equal(out["labels"], sample["labels"])
        outcomes.add(flipped)
        for key in ("rgb", "thermal", "labels"):
            expected = sample[key].flip(-1) if flipped else sample[key]
            assert torch.equal(out[key], expected)
    assert outcomes == {True, False}


def test_padding_when_smaller_than_crop() -> None:
    sample = _block_sample(20, 24)
    out = JointAugment(32, scale_range=(1.0, 1.0), hflip=False)(sample, torch.Generator().manual_seed(0))
    assert out["rgb"].shape == (3, 32, 32)
    padded = pad_to(sample, 32, 32)
    assert torch.equal(padded["labels"][20:, :], torch.full((12, 32), IGNORE_INDEX))
    assert torch.equal(padded["rgb"][:, :, 24:], torch.zeros(3, 32, 8))
    assert int((out["labels"] == IGNORE_INDEX).sum()) == 32 * 32 - 20 * 24


def test_deterministic_given_generator() -> None:
    aug = JointAugment(32, scale_range=(0.5, 2.0))
    a = aug(_block_sample(), torch.Generator().manual_seed(123))
    b = aug(_block_sample(), torch.Generator().manual_seed(123))
    c = aug(_block_sample(), torch.Generator().manual_seed(124))
    assert all(torch.equal(a[k], b[k]) for k in ("rgb", "thermal", "labels"))
    assert not all(torch.equal(a[k], c[k]) for k in ("rgb", "thermal", "labels"))


def test_resize_keeps_label_values() -> None:
    out = resize_sample(_block_sample(), 30, 50)
    assert out["labels"].dtype == torch.int64
    assert set(out["labels"].unique().tolist()) <= set(range(K))
    assert out["rgb"].shape == (3, 30, 50) and float(out["rgb"].min()) >= 0 and float(out["rgb"].max()) <= 1


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="crop sizes must be >= 1"):
        JointAugment(0)
    with pytest.raises(ValueError, match="scale_range"):
        JointAugment(32, scale_range=(2.0, 1.0))
