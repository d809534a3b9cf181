"""CMFS fusion head: the Sobel fusion head on odd sizes, gradients, ranges, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from base_tester import DIMS, assert_all_params_get_grads, feature_pyramid

from ivf_perception.checks import ShapeError
from ivf_perception.models.cmfs.heads import GradientResidualDenseBlock, SobelFusionHead
from ivf_perception.models.layers import Sobel


class TestGradientResidualDenseBlock:
    def test_sobel_branch_is_fixed_and_silent_on_flat_input(self) -> None:
        block = GradientResidualDenseBlock(4)
        assert isinstance(block.sobel, Sobel) and list(block.sobel.parameters()) == []
        x = torch.full((1, 4, 5, 7), 0.3)
        dense = torch.cat((x, F.leaky_relu(block.conv1(x), 0.2)), dim=1)
        dense = torch.cat((dense, F.leaky_relu(block.conv2(dense), 0.2)), dim=1)
        # replicate padding: a flat map has no gradient, border included; only conv_up's bias is left
        expected = F.leaky_relu(block.conv_down(dense) + block.conv_up.bias.view(1, -1, 1, 1), 0.1)
        torch.testing.assert_close(block(x), expected)

    def test_cardinality(self) -> None:
        assert GradientResidualDenseBlock(4, 6)(torch.randn(2, 4, 5, 3)).shape == (2, 6, 5, 3)


class TestSobelFusionHead:
    @pytest.mark.parametrize("training", [True, False])
    @pytest.mark.parametrize("batch", [1, 2, 3])
    def test_shapes_and_range(self, batch: int, training: bool) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4).train(training)
        for h, w in [(30, 40), (61, 79), (45, 62)]:  # the coarsest stage needs 2 values for BatchNorm
            rgb, thermal = torch.rand(batch, 3, h, w), torch.rand(batch, 1, h, w)
            fused = head(feature_pyramid(batch, h, w), feature_pyramid(batch, h, w), rgb, thermal)
            assert fused.shape == (batch, 3, h, w)
            assert fused.min() >= 0.0 and fused.max() <= 1.0

    def test_range_under_extreme_inputs(self) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4).eval()
        with torch.no_grad():
            fused = head(feature_pyramid(1, 30, 40, scale=1e4), feature_pyramid(1, 30, 40, scale=-1e4),
                         torch.full((1, 3, 30, 40), 1e3), torch.full((1, 1, 30, 40), -1e3))
        assert torch.isfinite(fused).all() and fused.min() >= 0.0 and fused.max() <= 1.0

    def test_gradients_reach_every_parameter(self) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4).train()
        rgb, thermal = torch.rand(2, 3, 30, 40), torch.rand(2, 1, 30, 40)
        head(feature_pyramid(2, 30, 40), feature_pyramid(2, 30, 40), rgb, thermal).sub(rgb).abs().mean().backward()
        assert_all_params_get_grads(head)

    def test_eval_is_deterministic(self) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4).eval()
        args = (feature_pyramid(2, 15, 20), feature_pyramid(2, 15, 20),
                torch.rand(2, 3, 15, 20), torch.rand(2, 1, 15, 20))
        with torch.no_grad():
            assert torch.equal(head(*args), head(*args))

    def test_default_width_and_inputs(self) -> None:
        head = SobelFusionHead([96, 192, 384, 768])
        assert head.embed_dim == 16
        assert head.fuse[0].in_channels == 2 * 4 * 16 + 3 + 1  # 8 projected maps, RGB, thermal

    def test_device_dtype(self) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4, device="cpu", dtype=torch.float64)
        assert {p.dtype for p in head.parameters()} == {torch.float64}
        out = head([f.double() for f in feature_pyramid(1, 30, 40)], [f.double() for f in feature_pyramid(1, 30, 40)],
                   torch.rand(1, 3, 30, 40, dtype=torch.float64), torch.rand(1, 1, 30, 40, dtype=torch.float64))
        assert out.dtype == torch.float64

    def test_exception(self) -> None:
        head = SobelFusionHead(DIMS, embed_dim=4)
        feats = feature_pyramid(2, 30, 40)
        rgb, thermal = torch.rand(2, 3, 30, 40), torch.rand(2, 1, 30, 40)
        with pytest.raises(ShapeError, match=r"thermal: expected 1=1"):
            head(feats, feats, rgb, rgb)
        with pytest.raises(ShapeError, match=r"thermal: expected H=30"):
            head(feats, feats, rgb, thermal[..., :29, :])
        with pytest.raises(ShapeError, match=r"rgb: expected 3=3"):
            head(feats, feats, thermal, thermal)
        with pytest.raises(ValueError, match=r"thermal_feats: expected 4 feature maps"):
            head(feats, feats[:2], rgb, thermal)
        with pytest.raises(ShapeError, match=r"rgb_feats\[0\]: expected B=2"):
            head([f[:1] for f in feats], feats, rgb, thermal)
