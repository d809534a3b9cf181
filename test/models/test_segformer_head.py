"""The shared SegFormer head (CMFS, S4Fusion): shapes, gradients, errors, and old CMFS checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from base_tester import DIMS, assert_all_params_get_grads, feature_pyramid

from ivf_perception.checks import ShapeError
from ivf_perception.models import build_model
from ivf_perception.models.cmfs.model import checkpoint_filter_fn as cmfs_checkpoint_filter_fn
from ivf_perception.models.layers import SegFormerHead


class TestSegFormerHead:
    @pytest.mark.parametrize("training", [True, False])
    @pytest.mark.parametrize("batch", [1, 2, 3])
    def test_shapes(self, batch: int, training: bool) -> None:
        head = SegFormerHead(DIMS, num_classes=5, embed_dim=8, ss2d_d_state=4).train(training)
        for h, w in [(60, 80), (15, 20), (30, 40), (61, 79)]:
            logits = head(feature_pyramid(batch, h, w), (h, w))
            assert logits.shape == (batch, 5, h, w)
            assert torch.isfinite(logits).all()

    def test_plain_segformer_and_three_stages(self) -> None:
        head = SegFormerHead(DIMS[:3], num_classes=2, embed_dim=8, ss2d_d_state=None)
        assert head.mixer is None
        assert head(feature_pyramid(2, 30, 40, DIMS[:3]), (30, 40)).shape == (2, 2, 30, 40)

    def test_gradients_reach_every_parameter(self) -> None:
        head = SegFormerHead(DIMS, num_classes=3, embed_dim=8, ss2d_d_state=4).train()
        target = torch.randint(0, 3, (2, 30, 40))
        F.cross_entropy(head(feature_pyramid(2, 30, 40), (30, 40)), target).backward()
        assert_all_params_get_grads(head)

    def test_eval_is_deterministic(self) -> None:
        head = SegFormerHead(DIMS, num_classes=3, embed_dim=8, ss2d_d_state=4, dropout=0.5).eval()
        feats = feature_pyramid(2, 15, 20)
        with torch.no_grad():
            assert torch.equal(head(feats, (15, 20)), head(feats, (15, 20)))

    def test_logits_are_upsampled_from_the_finest_stage(self) -> None:
        head = SegFormerHead(DIMS, num_classes=3, embed_dim=8, ss2d_d_state=4).eval()
        feats = feature_pyramid(1, 32, 48)
        with torch.no_grad():
            coarse = head(feats, feats[0].shape[-2:])
            fine = head(feats, (32, 48))
        torch.testing.assert_close(fine, F.interpolate(coarse, size=(32, 48), mode="bilinear", align_corners=False))

    def test_cmfs_paper_width(self) -> None:
        head = build_model("cmfs", preset="paper", device="meta").seg_head
        assert isinstance(head, SegFormerHead) and head.in_dims == (96, 192, 384, 768)
        assert head.embed_dim == 512 and head.mixer is not None and head.mixer.d_state == 16
        assert head.fuse[0].in_channels == 4 * 512 and head.classifier.out_channels == 9

    def test_exception(self) -> None:
        head = SegFormerHead(DIMS, num_classes=3, embed_dim=8, ss2d_d_state=None)
        feats = feature_pyramid(2, 30, 40)
        with pytest.raises(ValueError, match=r"feats: expected 4 feature maps .* got 3"):
            head(feats[:3], (30, 40))
        with pytest.raises(ShapeError, match=r"feats\[1\]: expected C=8"):
            head([feats[0], feats[0], feats[2], feats[3]], (30, 40))
        with pytest.raises(ShapeError, match=r"feats\[2\]: expected B=2"):
            head([feats[0], feats[1], feats[2][:1], feats[3]], (30, 40))
        with pytest.raises(ValueError, match="out_size must be"):
            head(feats, (30, 0))
        with pytest.raises(ValueError, match="in_dims must be a non-empty sequence"):
            SegFormerHead([], num_classes=3)


@pytest.mark.parametrize("name", ["test_cmfs", "test_s4fusion"])
def test_both_families_segment_with_the_shared_head(name: str) -> None:
    assert type(build_model(name).seg_head) is SegFormerHead


def _legacy_cmfs_head_state(state: dict[str, torch.Tensor], embed: int) -> dict[str, torch.Tensor]:
    """Write ``state`` the way CMFS saved its head before it was shared (SegFormer's names,
    stages concatenated coarsest first)."""
    names = {"seg_head.proj.": "seg_head.linear_c.", "seg_head.fuse.0.": "seg_head.linear_fuse.",
             "seg_head.fuse.1.": "seg_head.fuse_norm.", "seg_head.classifier.": "seg_head.linear_pred."}
    out = {}
    for key, value in state.items():
        new = next((n for n in names if key.startswith(n)), None)
        if new is None:
            out[key] = value
            continue
        if key == "seg_head.fuse.0.weight":
            value = torch.cat(value.split(embed, dim=1)[::-1], dim=1)
        out[names[new] + key[len(new):]] = value
    return out


def test_old_cmfs_checkpoints_load_through_the_filter_and_give_the_same_logits() -> None:
    torch.manual_seed(0)
    src = build_model("test_cmfs", num_classes=5).eval()
    for p in src.parameters():  # leave no zero-initialised weight that would hide a mix-up
        p.data.add_(0.05 * torch.randn_like(p))
    legacy = _legacy_cmfs_head_state(src.state_dict(), src.seg_head.embed_dim)
    assert "seg_head.linear_fuse.weight" in legacy and "seg_head.fuse.0.weight" not in legacy
    dst = build_model("test_cmfs", num_classes=5).eval()
    dst.load_state_dict(cmfs_checkpoint_filter_fn(legacy, dst), strict=True)
    x = (torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(dst(*x).logits, src(*x).logits)
