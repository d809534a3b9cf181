"""Shared layers: cross scan/merge, SS2D, VSS block, Cross SS2D, DropPath, norm and device/dtype factories."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivf_perception.checks import ShapeError
from ivf_perception.models.layers import (
    SS2D,
    CrossSS2D,
    DropPath,
    Mlp,
    VSSBlock,
    cross_merge,
    cross_scan,
    drop_path,
    factory_kwargs,
    get_norm_layer,
    interleave,
)
from ivf_perception.models.layers.bimamba import BidirectionalMamba
from ivf_perception.models.layers.ssm_params import DirectionalScan


def assert_all_params_get_grads(module: nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing}"


class TestCrossScan:
    def test_orders(self) -> None:
        x = torch.arange(6.0).view(1, 1, 2, 3)
        expected = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]])
        torch.testing.assert_close(cross_scan(x)[0, :, 0], expected.float())

    @pytest.mark.parametrize("h, w", [(5, 7), (7, 5), (1, 4), (4, 1), (3, 3)])
    def test_round_trip(self, h: int, w: int) -> None:
        x = torch.randn(2, 3, h, w)
        xs = cross_scan(x)
        assert xs.shape == (2, 4, 3, h * w)
        torch.testing.assert_close(cross_merge(xs, h, w), 4 * x.flatten(2))

    def test_merge_undoes_each_direction(self) -> None:
        x = torch.randn(1, 2, 3, 5)
        xs = cross_scan(x)
        for k in range(4):
            only_k = torch.zeros_like(xs)
            only_k[:, k] = xs[:, k]
            torch.testing.assert_close(cross_merge(only_k, 3, 5), x.flatten(2))

    def test_exception(self) -> None:
        with pytest.raises(ShapeError, match=r"x: expected 4 dimensions \(B C H W\)"):
            cross_scan(torch.zeros(3, 4, 5))
        with pytest.raises(ShapeError, match=r"y: expected L = H\*W = 3\*5 = 15 tokens"):
            cross_merge(torch.zeros(1, 4, 2, 14), 3, 5)
        with pytest.raises(ShapeError, match=r"y: expected 4=4"):
            cross_merge(torch.zeros(1, 2, 2, 15), 3, 5)

    def test_interleave(self) -> None:
        a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0]])
        torch.testing.assert_close(interleave(a, b), torch.tensor([[1.0, 10.0, 2.0, 20.0, 3.0, 30.0]]))


class TestSS2D:
    def test_cardinality_odd_size(self) -> None:
        model = SS2D(8, d_state=4, ssm_ratio=1.5)
        assert model(torch.randn(2, 5, 7, 8)).shape == (2, 5, 7, 8)

    def test_backward_reaches_all_parameters(self) -> None:
        model = SS2D(8, d_state=4, bias=True)
        model(torch.randn(1, 3, 5, 8)).square().sum().backward()
        assert_all_params_get_grads(model)

    def test_device_dtype(self) -> None:
        model = SS2D(8, d_state=4, device="cpu", dtype=torch.float64)
        assert {p.dtype for p in model.parameters()} == {torch.float64}
        out = model(torch.randn(1, 3, 4, 8, dtype=torch.float64))
        assert out.dtype == torch.float64

    def test_mamba_init(self) -> None:
        model = SS2D(16, d_state=6)
        dt = nn.functional.softplus(model.dt_projs_bias)
        assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
        torch.testing.assert_close(-torch.exp(model.A_logs[0]), -torch.arange(1.0, 7.0))
        assert model.A_logs._no_weight_decay and model.Ds._no_weight_decay
        assert model.x_proj_weight.shape == (4, model.dt_rank + 12, 32) and model.dt_rank == 1

    def test_conv_options(self) -> None:
        assert isinstance(SS2D(8, d_conv=1).conv2d, nn.Identity)
        assert SS2D(8, d_conv=1)(torch.randn(1, 2, 3, 8)).shape == (1, 2, 3, 8)
        with pytest.raises(ValueError, match="d_conv must be odd"):
            SS2D(8, d_conv=4)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="Unknown scan_backend 'cuda2'"):
            SS2D(8, scan_backend="cuda2")
        with pytest.raises(ShapeError, match=r"x: expected C=8"):
            SS2D(8)(torch.randn(1, 3, 3, 4))

    def test_backends_agree(self) -> None:
        model = SS2D(8, d_state=4, scan_backend="chunked")
        x = torch.randn(1, 3, 5, 8)
        expected = model(x)
        model.scan_backend = "ref"
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


class TestVSSBlock:
    def test_cardinality_odd_size(self) -> None:
        assert VSSBlock(8, d_state=4)(torch.randn(2, 5, 7, 8)).shape == (2, 5, 7, 8)

    def test_mlp_branch_and_backward(self) -> None:
        block = VSSBlock(8, d_state=4, mlp_ratio=2.0, drop_path=0.1)
        assert isinstance(block.mlp, Mlp) and block.mlp.fc1.out_features == 16
        block(torch.randn(2, 3, 5, 8)).square().sum().backward()
        assert_all_params_get_grads(block)
        assert VSSBlock(8).mlp is None

    def test_drop_path_is_identity_in_eval(self) -> None:
        block = VSSBlock(8, d_state=4, drop_path=0.9).eval()
        x = torch.randn(1, 3, 3, 8)
        torch.testing.assert_close(block(x), block(x))

    def test_device_dtype(self) -> None:
        block = VSSBlock(8, d_state=4, mlp_ratio=1.0, device="cpu", dtype=torch.float64)
        assert {p.dtype for p in block.parameters()} == {torch.float64}
        assert block(torch.randn(1, 3, 4, 8, dtype=torch.float64)).dtype == torch.float64

    def test_norm_layer_choices(self) -> None:
        assert isinstance(VSSBlock(8, norm_layer="rmsnorm").norm, nn.RMSNorm)
        assert isinstance(VSSBlock(8, norm_layer=nn.LayerNorm).norm, nn.LayerNorm)
        with pytest.raises(ValueError, match="Unknown norm layer 'batchnorm'"):
            VSSBlock(8, norm_layer="batchnorm")


class TestCrossSS2D:
    def test_cardinality_odd_size(self) -> None:
        model = CrossSS2D(8, d_state=5)
        out_x, out_y = model(torch.randn(2, 5, 7, 8), torch.randn(2, 5, 7, 8))
        assert out_x.shape == out_y.shape == (2, 5, 7, 8)

    def test_backward_reaches_all_parameters(self) -> None:
        model = CrossSS2D(8, d_state=4)
        out_x, out_y = model(torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8))
        (out_x.square().sum() + out_y.square().sum()).backward()
        assert_all_params_get_grads(model)

    def test_device_dtype(self) -> None:
        model = CrossSS2D(8, d_state=4, device="cpu", dtype=torch.float64)
        assert {p.dtype for p in model.parameters()} == {torch.float64}
        x = torch.randn(1, 3, 4, 8, dtype=torch.float64)
        assert all(o.dtype == torch.float64 for o in model(x, x))

    def test_modality_specific_parameters(self) -> None:
        model = CrossSS2D(8, d_state=4).eval()
        x, y = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)
        out_x, out_y = model(x, y)
        swapped_y, swapped_x = model(y, x)
        assert not torch.allclose(out_x, swapped_x, atol=1e-4)
        assert not torch.allclose(out_y, swapped_y, atol=1e-4)
        with torch.no_grad():  # visible tokens read y_proj_weight, infrared ones x_proj_weight
            model.y_proj_weight.copy_(model.x_proj_weight)
        assert not torch.allclose(model(x, y)[1], out_y, atol=1e-4)

    def test_interleaving_shares_the_hidden_state(self) -> None:
        model = CrossSS2D(8, d_state=4).eval()
        with torch.no_grad():  # without the Patch Mark, y can reach out_x only through the state
            model.mark_proj.zero_()
        x, y = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)
        y2 = y.clone()
        y2[:, 1, 2] += 1.0
        out_x, _ = model(x, y)
        out_x2, _ = model(x, y2)
        assert not torch.allclose(out_x, out_x2, atol=1e-6)

    def test_backends_agree(self) -> None:
        model = CrossSS2D(8, d_state=4, scan_backend="chunked")
        x, y = torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)
        expected = model(x, y)
        model.scan_backend = "ref"
        for got, want in zip(model(x, y), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    def test_exception(self) -> None:
        model = CrossSS2D(8)
        with pytest.raises(ShapeError, match=r"y: expected H=3"):
            model(torch.randn(1, 3, 5, 8), torch.randn(1, 4, 5, 8))
        with pytest.raises(ValueError, match="Unknown scan_backend"):
            CrossSS2D(8, scan_backend="nope")


class TestDropPath:
    def test_eval_and_zero_prob_are_identity(self) -> None:
        x = torch.randn(4, 3)
        assert DropPath(0.5).eval()(x) is x
        assert DropPath(0.0)(x) is x

    def test_drops_whole_samples_and_rescales(self) -> None:
        x = torch.ones(256, 3, 2)
        out = drop_path(x, 0.5, training=True)
        per_sample = out.flatten(1)
        assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
        assert (per_sample == per_sample[:, :1]).all()
        assert 0.3 < (per_sample[:, 0] > 0).float().mean() < 0.7
        assert (drop_path(x, 1.0, training=True) == 0).all()

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\], got 1.5"):
            DropPath(1.5)


class TestGetNormLayer:
    def test_names_and_callables(self) -> None:
        assert get_norm_layer("LayerNorm") is nn.LayerNorm
        assert get_norm_layer("layer_norm") is nn.LayerNorm
        assert get_norm_layer("rmsnorm") is nn.RMSNorm
        assert get_norm_layer(None) is nn.Identity
        assert get_norm_layer(nn.GroupNorm) is nn.GroupNorm
        assert isinstance(get_norm_layer(None)(8, device="cpu", dtype=torch.float64), nn.Identity)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"Unknown norm layer 'bn'; supported norm layers: \['identity'"):
            get_norm_layer("bn")
        with pytest.raises(TypeError, match="norm_layer must be a name, a callable or None, got int"):
            get_norm_layer(3)  # type: ignore[arg-type]


class TestFactoryKwargs:
    def test_places_layers(self) -> None:
        dd = factory_kwargs("meta", torch.float64)
        assert dd == {"device": "meta", "dtype": torch.float64}
        layer = nn.Linear(2, 3, **dd)
        assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.float64
        assert factory_kwargs() == {"device": None, "dtype": None}

    @pytest.mark.parametrize("build", [
        lambda dd: SS2D(8, **dd),
        lambda dd: CrossSS2D(8, **dd),
        lambda dd: BidirectionalMamba(8, **dd),
    ], ids=["ss2d", "cross_ss2d", "bimamba"])
    def test_directional_scan_params_follow_device_and_dtype(self, build) -> None:
        mixer = build(factory_kwargs("cpu", torch.float64))
        assert isinstance(mixer, DirectionalScan)
        for name in ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"):
            param = getattr(mixer, name)
            assert isinstance(param, nn.Parameter) and param.dtype == torch.float64, name
