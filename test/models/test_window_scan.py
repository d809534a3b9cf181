"""Local-window scan orders (LocalMamba) and SS2D's ``scan_order="window"`` and ``gated=False`` options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ivf_perception.checks import ShapeError
from ivf_perception.models.layers import SS2D, cross_scan, window_merge, window_scan, window_scan_order
from ivf_perception.models.ops import selective_scan_ref

SIZES = [(5, 7), (7, 9), (1, 4), (4, 1), (3, 3), (8, 8), (2, 5)]


def reference_orders(h: int, w: int, window: int) -> list[list[int]]:
    """Directions 0 and 1 by explicit loops: windows in row (column) order, then pixels inside."""
    row_first, col_first = [], []
    win_rows, win_cols = -(-h // window), -(-w // window)
    for wr in range(win_rows):
        for wc in range(win_cols):
            for r in range(wr * window, min(h, (wr + 1) * window)):
                for c in range(wc * window, min(w, (wc + 1) * window)):
                    row_first.append(r * w + c)
    for wc in range(win_cols):
        for wr in range(win_rows):
            for c in range(wc * window, min(w, (wc + 1) * window)):
                for r in range(wr * window, min(h, (wr + 1) * window)):
                    col_first.append(r * w + c)
    return [row_first, col_first]


class TestWindowScan:
    @pytest.mark.parametrize("window", [1, 2, 3, 4])
    @pytest.mark.parametrize("h, w", SIZES)
    def test_orders_match_loops_and_are_permutations(self, h: int, w: int, window: int) -> None:
        expected = reference_orders(h, w, window)
        assert all(sorted(order) == list(range(h * w)) for order in expected)
        assert window_scan_order(h, w, window).tolist() == expected
        x = torch.randn(2, 3, h, w)
        xs = window_scan(x, window)
        assert xs.shape == (2, 4, 3, h * w)
        flat = x.flatten(2)
        for k, order in enumerate(expected):
            torch.testing.assert_close(xs[:, k], flat[..., order])
            torch.testing.assert_close(xs[:, k + 2], flat[..., order[::-1]])

    def test_numeric_partial_windows(self) -> None:
        xs = window_scan(torch.arange(9.0).view(1, 1, 3, 3), 2)[0, :, 0]
        expected = torch.tensor([[0, 1, 3, 4, 2, 5, 6, 7, 8], [0, 3, 1, 4, 6, 7, 2, 5, 8]]).float()
        torch.testing.assert_close(xs[:2], expected)
        torch.testing.assert_close(xs[2:], expected.flip(-1))

    @pytest.mark.parametrize("window", [1, 2, 4])
    @pytest.mark.parametrize("h, w", SIZES)
    def test_round_trip(self, h: int, w: int, window: int) -> None:
        x = torch.randn(2, 3, h, w)
        torch.testing.assert_close(window_merge(window_scan(x, window), h, w, window), 4 * x.flatten(2))

    def test_merge_undoes_each_direction(self) -> None:
        x = torch.randn(1, 2, 7, 9)
        xs = window_scan(x, 4)
        for k in range(4):
            only_k = torch.zeros_like(xs)
            only_k[:, k] = xs[:, k]
            torch.testing.assert_close(window_merge(only_k, 7, 9, 4), x.flatten(2))

    @pytest.mark.parametrize("window", [1, 9])
    def test_degenerate_windows_are_the_cross_scan(self, window: int) -> None:
        x = torch.randn(1, 2, 7, 9)
        torch.testing.assert_close(window_scan(x, window), cross_scan(x))

    def test_noncontiguous(self) -> None:
        x = torch.randn(1, 5, 7, 2).permute(0, 3, 1, 2)
        assert not x.is_contiguous()
        torch.testing.assert_close(window_scan(x, 2), window_scan(x.contiguous(), 2))

    def test_gradcheck(self) -> None:
        x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: window_merge(window_scan(t, 2) * 1.5, 3, 5, 2), (x,))

    def test_cache_filled_in_inference_mode_serves_training(self) -> None:
        with torch.inference_mode():
            window_scan(torch.randn(1, 1, 11, 13), 3)
        x = torch.randn(1, 1, 11, 13, requires_grad=True)
        window_merge(window_scan(x, 3), 11, 13, 3).sum().backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="window must be a positive int"):
            window_scan(torch.zeros(1, 1, 3, 3), 0)
        with pytest.raises(ShapeError, match=r"x: expected 4 dimensions \(B C H W\)"):
            window_scan(torch.zeros(3, 4, 5), 2)
        with pytest.raises(ShapeError, match=r"y: expected L = H\*W = 3\*5 = 15 tokens"):
            window_merge(torch.zeros(1, 4, 2, 14), 3, 5, 2)
        with pytest.raises(ValueError, match="H and W must be >= 1"):
            window_scan_order(0, 3, 2)


def reference_ss2d(model: SS2D, x: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """SS2D by its definition: per direction gather, ``selective_scan_ref``, scatter back, sum."""
    b, h, w, _ = x.shape
    d, n, r = model.d_inner, model.d_state, model.dt_rank
    projected = model.in_proj(x)
    u_map, z = projected.chunk(2, dim=-1) if model.gated else (projected, None)
    flat = model.act(model.conv2d(u_map.permute(0, 3, 1, 2))).flatten(2)  # (B, D, L)
    directions = [orders[0], orders[1], orders[0][::-1], orders[1][::-1]]
    y = torch.zeros_like(flat)
    for k, order in enumerate(directions):
        u = flat[..., order]
        dt, bs, cs = torch.einsum("bdl,cd->bcl", u, model.x_proj_weight[k]).split([r, n, n], dim=1)
        delta = torch.einsum("brl,dr->bdl", dt, model.dt_projs_weight[k])
        out = selective_scan_ref(u, delta, -torch.exp(model.A_logs.view(4, d, n)[k]), bs, cs,
                                 model.Ds.view(4, d)[k], delta_bias=model.dt_projs_bias[k], delta_softplus=True)
        y[..., order] = y[..., order] + out
    y = model.out_norm(y.transpose(1, 2).reshape(b, h, w, d))
    if z is not None:
        y = y * F.silu(z)
    return model.out_proj(y)


class TestSS2DWindowOrder:
    @pytest.mark.parametrize("gated", [True, False])
    def test_matches_per_direction_reference(self, gated: bool) -> None:
        model = SS2D(6, d_state=3, ssm_ratio=1.0, scan_order="window", window_size=2, gated=gated,
                     scan_backend="ref")
        x = torch.randn(2, 3, 5, 6)
        torch.testing.assert_close(model(x), reference_ss2d(model, x, reference_orders(3, 5, 2)),
                                   atol=1e-5, rtol=1e-5)

    def test_cross_default_matches_reference(self) -> None:
        model = SS2D(6, d_state=3, ssm_ratio=1.0, scan_backend="ref")
        x = torch.randn(1, 3, 4, 6)
        torch.testing.assert_close(model(x), reference_ss2d(model, x, reference_orders(3, 4, 4)),
                                   atol=1e-5, rtol=1e-5)

    def test_window_changes_the_output_unless_it_covers_the_map(self) -> None:
        cross = SS2D(6, d_state=3, ssm_ratio=1.0)
        small, large = (SS2D(6, d_state=3, ssm_ratio=1.0, scan_order="window", window_size=s) for s in (2, 8))
        small.load_state_dict(cross.state_dict())
        large.load_state_dict(cross.state_dict())
        x = torch.randn(1, 5, 7, 6)
        assert not torch.allclose(small(x), cross(x), atol=1e-4)
        torch.testing.assert_close(large(x), cross(x))

    def test_backward_and_odd_sizes(self) -> None:
        model = SS2D(6, d_state=3, scan_order="window", window_size=4)
        model(torch.randn(2, 7, 9, 6)).square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"Unknown scan_order 'diag'; supported scan orders: \['cross'"):
            SS2D(8, scan_order="diag")
        with pytest.raises(ValueError, match="window_size must be a positive int, got 0"):
            SS2D(8, scan_order="window", window_size=0)

    def test_repr(self) -> None:
        assert "scan_order='window', window_size=3" in repr(SS2D(8, scan_order="window", window_size=3))


class TestSS2DUngated:
    def test_v05_noz_parameter_shapes(self) -> None:
        """VMamba-T "0230s" stage 0: d_model 96, ssm_ratio 1, d_state 1, no conv bias, forward v05_noz."""
        model = SS2D(96, d_state=1, ssm_ratio=1.0, conv_bias=False, gated=False)
        shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
        assert shapes == {
            "in_proj.weight": (96, 96),
            "conv2d.weight": (96, 1, 3, 3),
            "x_proj_weight": (4, 6 + 2, 96),
            "dt_projs_weight": (4, 96, 6),
            "dt_projs_bias": (4, 96),
            "A_logs": (4 * 96, 1),
            "Ds": (4 * 96,),
            "out_norm.weight": (96,),
            "out_norm.bias": (96,),
            "out_proj.weight": (96, 96),
        }

    def test_gated_default_keeps_the_double_projection(self) -> None:
        gated, ungated = SS2D(8, ssm_ratio=2.0), SS2D(8, ssm_ratio=2.0, gated=False)
        assert gated.in_proj.weight.shape == (32, 8) and ungated.in_proj.weight.shape == (16, 8)
        assert set(gated.state_dict()) == set(ungated.state_dict())
        assert ungated(torch.randn(1, 3, 5, 8)).shape == (1, 3, 5, 8)
