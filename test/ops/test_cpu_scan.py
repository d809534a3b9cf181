"""The fused CPU selective scan (C++ extension): against the sequential reference, the fused
cross scan against cross_scan + scan + cross_merge, the layers' fused paths against their
unfused ones, the dispatch, and the clean fallback when the extension is missing."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest
import torch

from ivf_perception.models import build_model
from ivf_perception.models.layers.cross_scan import cross_merge, cross_scan
from ivf_perception.models.layers.cross_ss2d import CrossSS2D
from ivf_perception.models.layers.ss2d import SS2D
from ivf_perception.models.layers.ssm_params import project_image_tokens
from ivf_perception.models.ops import (
    _backend,
    cross_selective_scan,
    has_cpu_scan,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

pytestmark = pytest.mark.skipif(
    not has_cpu_scan(),
    reason="fused CPU scan not built here (`python setup.py build_ext --inplace`; `make venv` builds it)",
)
TOL = {"atol": 1e-5, "rtol": 1e-5}


def operands(bsz: int = 2, dim: int = 12, n_state: int = 5, length: int = 37, groups: int = 3,
             a_scale: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 operands with O(1) outputs (B/C scaled so that y stays of order one)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    return {
        "u": rnd(bsz, dim, length),
        "delta": rnd(bsz, dim, length) - 1.0,
        "A": -a_scale * torch.rand(dim, n_state, generator=gen) - 0.05,
        "B": rnd(bsz, groups, n_state, length) / math.sqrt(n_state),
        "C": rnd(bsz, groups, n_state, length),
        "D": rnd(dim),
        "z": rnd(bsz, dim, length),
        "delta_bias": 0.1 * rnd(dim),
    }


def reference(ops: dict[str, torch.Tensor | None], softplus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential definition in float64, as float32."""
    args = {k: None if v is None else v.double() for k, v in ops.items()}
    y, last = selective_scan_ref(**args, delta_softplus=softplus, return_last_state=True)
    return y.float(), last.float()


@pytest.mark.parametrize(
    ("bsz", "dim", "n_state", "length", "groups"),
    [
        (2, 12, 5, 37, 3),   # odd length, 4 channels per group (a partial vector)
        (1, 8, 4, 1, 1),     # L = 1
        (3, 20, 16, 65, 4),  # batch > 1, length just over a block of 64 steps
        (1, 48, 12, 130, 4),  # S4Fusion-like: four groups of 12 channels
        (2, 9, 64, 20, 1),   # largest supported state size
    ],
)
def test_matches_the_reference(bsz: int, dim: int, n_state: int, length: int, groups: int) -> None:
    ops = operands(bsz, dim, n_state, length, groups)
    y, last = selective_scan(**ops, delta_softplus=True, return_last_state=True, backend="cpu")
    y_ref, last_ref = reference(ops)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(last, last_ref, **TOL)


@pytest.mark.parametrize("drop", [(), ("z",), ("D",), ("delta_bias",), ("z", "D", "delta_bias")])
@pytest.mark.parametrize("softplus", [True, False])
def test_optional_operands(drop: tuple[str, ...], softplus: bool) -> None:
    ops: dict[str, torch.Tensor | None] = dict(operands())
    if not softplus:
        ops["delta"] = torch.rand_like(ops["delta"]) + 0.01  # raw Δ must be positive
    for name in drop:
        ops[name] = None
    y = selective_scan(**ops, delta_softplus=softplus, backend="cpu")
    torch.testing.assert_close(y, reference(ops, softplus)[0], **TOL)


def test_strong_decay_and_large_steps() -> None:
    """exp(Δ·A) far below float32's smallest normal (down to e^-1000) must decay to zero, not to
    garbage: the kernel clamps its exponent."""
    ops = operands(a_scale=200.0)
    ops["delta"] = ops["delta"] + 6.0  # softplus(Δ) ~ 5
    y = selective_scan(**ops, delta_softplus=True, backend="cpu")
    torch.testing.assert_close(y, reference(ops)[0], **TOL)


def test_ungrouped_and_non_contiguous_inputs() -> None:
    """Transposed views (Mamba's (B, L, D) projections) are read through their strides."""
    ops = operands(groups=1)
    views = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() > 1 else v for k, v in ops.items()}
    views["B"], views["C"] = views["B"][:, 0], views["C"][:, 0]  # (B, N, L), non-contiguous
    assert not views["u"].is_contiguous() and not views["B"].is_contiguous()
    y = selective_scan(**views, delta_softplus=True, backend="cpu")
    torch.testing.assert_close(y, reference(ops)[0], **TOL)


def test_auto_takes_the_kernel_on_cpu_and_chunked_for_training(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = operands()
    with torch.no_grad():
        fused = selective_scan(**ops, delta_softplus=True, backend="cpu")
        assert torch.equal(selective_scan(**ops, delta_softplus=True), fused)
        monkeypatch.setenv(_backend.CPU_DISABLE_ENV_VAR, "1")
        chunked = selective_scan_chunked(**ops, delta_softplus=True)
        assert torch.equal(selective_scan(**ops, delta_softplus=True), chunked)
    monkeypatch.delenv(_backend.CPU_DISABLE_ENV_VAR)
    u = ops["u"].clone().requires_grad_()
    y = selective_scan(**{**ops, "u": u}, delta_softplus=True)  # forward-only kernel: chunked
    y.sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="forward-only"):
        selective_scan(**{**ops, "u": u}, delta_softplus=True, backend="cpu")


def test_kernel_rejects_what_it_cannot_run() -> None:
    ops = operands()
    with pytest.raises(RuntimeError, match="float32"):
        selective_scan(**{k: v.double() for k, v in ops.items()}, backend="cpu")
    with pytest.raises(RuntimeError, match="delta"):  # the operator's own check, past the Python one
        torch.ops.ivf_perception.selective_scan_fwd(
            ops["u"], ops["delta"][..., :5], ops["A"], ops["B"], ops["C"], None, None, None, True)


@pytest.fixture
def missing_extension(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The extension as on a machine where it could not be built."""
    monkeypatch.setattr(_backend, "CPU_SCAN_MODULE", "ivf_perception.models.ops._cpu_scan_not_built")
    _backend._load_cpu_scan.cache_clear()
    yield
    _backend._load_cpu_scan.cache_clear()


def test_falls_back_to_chunked_with_one_log_line(missing_extension: None, caplog: pytest.LogCaptureFixture) -> None:
    ops = operands()
    with caplog.at_level(logging.WARNING, logger=_backend.__name__), torch.no_grad():
        assert not has_cpu_scan()
        y = selective_scan(**ops, delta_softplus=True)
        selective_scan(**ops, delta_softplus=True)
        layer = SS2D(8, d_state=4).eval()
        layer(torch.randn(1, 3, 5, 8))  # the layers' fused paths fall back too
    assert torch.equal(y, selective_scan_chunked(**ops, delta_softplus=True))
    assert len([r for r in caplog.records if "fused CPU selective scan unavailable" in r.message]) == 1
    with pytest.raises(RuntimeError, match="build_ext"):
        selective_scan(**ops, backend="cpu")


def unfused_cross_scan(u: torch.Tensor, x_dbl: torch.Tensor, dt_w: torch.Tensor, A: torch.Tensor,
                       D: torch.Tensor, bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """What the fused cross scan replaces: orders materialised, modalities interleaved, the
    sequential reference, orders undone and summed; (B, M, L, C) like the kernel."""
    bsz, mods, chans, _ = u.shape
    rank, n_state = dt_w.shape[2], A.shape[1]
    seqs = [cross_scan(u[:, m].reshape(bsz, chans, h, w)) for m in range(mods)]  # (B, 4, C, L) each
    proj = [torch.stack([cross_scan(x_dbl[:, m, k].reshape(bsz, -1, h, w))[:, k] for k in range(4)], dim=1)
            for m in range(mods)]  # direction k's own rows, read in order k: (B, 4, R + 2N, L)
    parts = [torch.split(p, [rank, n_state, n_state], dim=2) for p in proj]
    deltas = [torch.einsum("bkrl,kcr->bkcl", dts, dt_w) for dts, _, _ in parts]

    def mix(ts: list[torch.Tensor]) -> torch.Tensor:  # modalities interleaved per position
        return torch.stack(ts, dim=-1).flatten(-2)

    y = selective_scan_ref(
        mix(seqs).flatten(1, 2).double(), mix(deltas).flatten(1, 2).double(), A.double(),
        mix([p[1] for p in parts]).double(), mix([p[2] for p in parts]).double(), D.double(),
        delta_bias=bias.double(), delta_softplus=True,
    ).float().view(bsz, 4, chans, h * w, mods)
    return torch.stack([cross_merge(y[..., m], h, w).transpose(1, 2) for m in range(mods)], dim=1)


@pytest.mark.parametrize(("bsz", "mods", "chans", "h", "w"),
                         [(1, 1, 8, 3, 5), (2, 2, 12, 4, 3), (1, 2, 5, 1, 7), (1, 1, 3, 6, 1), (1, 2, 20, 1, 1)])
def test_cross_scan_matches_the_unfused_composition(bsz: int, mods: int, chans: int, h: int, w: int) -> None:
    gen = torch.Generator().manual_seed(3)
    rank, n_state = 2, 4
    u = torch.randn(bsz, mods, chans, h * w, generator=gen)
    x_dbl = torch.randn(bsz, mods, 4, rank + 2 * n_state, h * w, generator=gen) * 0.5
    dt_w = torch.randn(4, chans, rank, generator=gen)
    A = -torch.rand(4 * chans, n_state, generator=gen) - 0.1
    D, bias = torch.randn(4 * chans, generator=gen), torch.randn(4 * chans, generator=gen) - 1.0
    got = cross_selective_scan(u, x_dbl, dt_w, A, D, bias, True, h, w)
    torch.testing.assert_close(got, unfused_cross_scan(u, x_dbl, dt_w, A, D, bias, h, w), **TOL)


def test_project_image_tokens_equals_projecting_each_order() -> None:
    tokens = torch.randn(2, 1, 12, 6)  # (B, M, L, D), a 3×4 map
    weight = torch.randn(4, 7, 6)
    x_dbl = project_image_tokens(tokens, weight)  # (B, 1, 4, 7, L) in image order
    ordered = torch.einsum("bkdl,kcd->bkcl", cross_scan(tokens[:, 0].transpose(1, 2).reshape(2, 6, 3, 4)), weight)
    for k in range(4):  # read direction k's rows in order k: the per-order projection
        in_order = cross_scan(x_dbl[:, 0, k].reshape(2, 7, 3, 4))[:, k]
        torch.testing.assert_close(in_order, ordered[:, k], **TOL)


@pytest.mark.parametrize("layer", ["ss2d", "ss2d_noz", "cross_ss2d"])
def test_layers_fused_path_equals_the_unfused_path(layer: str) -> None:
    torch.manual_seed(0)
    if layer == "cross_ss2d":
        module: torch.nn.Module = CrossSS2D(12, d_state=6).eval()  # d_inner 18: a partial vector
        inputs = (torch.randn(2, 5, 7, 12), torch.randn(2, 5, 7, 12))
    else:
        module = SS2D(12, d_state=6, gated=layer == "ss2d", d_conv=3 if layer == "ss2d" else 1).eval()
        inputs = (torch.randn(2, 5, 7, 12),)
    with torch.no_grad():
        module.A_logs.normal_(0, 1)
        module.dt_projs_bias.normal_(0, 1)
        fused = module(*inputs)
        module.scan_backend = "chunked"
        unfused = module(*inputs)
    for a, b in zip(*((fused, unfused) if isinstance(fused, tuple) else ((fused,), (unfused,)))):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_s4fusion_outputs_equal_before_and_after(preset: str) -> None:
    """The whole model: fused kernels (auto) against the former eager path (chunked)."""
    torch.manual_seed(0)
    fused_model = build_model("s4fusion", preset=preset).eval()
    chunked_model = build_model("s4fusion", preset=preset, scan_backend="chunked").eval()
    chunked_model.load_state_dict(fused_model.state_dict())
    x = (torch.rand(1, 3, 48, 64), torch.rand(1, 1, 48, 64))
    with torch.no_grad():
        a, b = fused_model(*x), chunked_model(*x)
    torch.testing.assert_close(a.fused, b.fused, **TOL)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
