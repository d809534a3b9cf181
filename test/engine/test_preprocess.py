"""Batch assembly: the host-side fast path against the plain torch formulation it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ivf_perception.engine.preprocess import prepare_batch, prepare_rgb, prepare_thermal
from ivf_perception.io.thermal import AGCConfig


def _reference_batch(rgbs: list[np.ndarray], thermals: list[np.ndarray], multiple: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """permute + float + div + replicate padding + stack, as pre-processing did before."""
    rgb_u8 = [prepare_rgb(r) for r in rgbs]
    th = [prepare_thermal(t) for t in thermals]
    hp = -(-max(r.shape[0] for r in rgb_u8) // multiple) * multiple
    wp = -(-max(r.shape[1] for r in rgb_u8) // multiple) * multiple
    out_rgb, out_th = [], []
    for r, t in zip(rgb_u8, th):
        rt = torch.from_numpy(r.copy()).permute(2, 0, 1).float().div_(255.0)
        tt = torch.from_numpy(t.copy())[None]
        pad = (0, wp - r.shape[1], 0, hp - r.shape[0])
        out_rgb.append(F.pad(rt[None], pad, mode="replicate")[0])
        out_th.append(F.pad(tt[None], pad, mode="replicate")[0])
    return torch.stack(out_rgb), torch.stack(out_th)


@pytest.mark.parametrize(("sizes", "multiple"), [([(480, 640)], 32), ([(37, 53)], 16), ([(30, 40), (17, 23)], 8),
                                                 ([(2, 2)], 4)])
def test_batch_equals_the_torch_formulation_bit_for_bit(sizes: list[tuple[int, int]], multiple: int) -> None:
    rng = np.random.default_rng(len(sizes) * 1000 + multiple)
    rgbs = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]
    thermals = [rng.integers(0, 256, (h, w), np.uint8) for h, w in sizes]
    batch = prepare_batch(rgbs, thermals, multiple=multiple, device=torch.device("cpu"))
    ref_rgb, ref_th = _reference_batch(rgbs, thermals, multiple)
    assert torch.equal(batch.rgb, ref_rgb) and torch.equal(batch.thermal, ref_th)
    assert batch.rgb.is_contiguous() and batch.sizes == [tuple(s) for s in sizes]


def test_read_only_inputs_such_as_message_views_are_accepted() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    thermal = np.random.default_rng(1).integers(20_000, 30_000, (20, 30), np.uint16)
    rgb.flags.writeable = False
    thermal.flags.writeable = False
    batch = prepare_batch([rgb], [thermal], multiple=8, device=torch.device("cpu"), agc=AGCConfig())
    assert batch.rgb.shape == (1, 3, 24, 32) and batch.thermal.shape == (1, 1, 24, 32)
    assert torch.equal(batch.thermal[0, 0, :20, :30], torch.from_numpy(AGCConfig().apply(thermal)))
