"""Selective scan: the reference against hand-computed values, the chunked form and the
CUDA kernel against the reference, dispatch, the module, and ONNX export."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import pytest
import torch

from ivf_perception.checks import ShapeError
from ivf_perception.models.ops import (
    SelectiveScan,
    has_cuda_scan,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from ivf_perception.models.ops._backend import DISABLE_ENV_VAR

OPTION_NAMES = ("D", "z", "delta_bias")
GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(params=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def make_operands(
    bsz: int = 2, dim: int = 8, n_state: int = 4, length: int = 37, groups: int | None = 2, *,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, a_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Random operands with O(1) outputs; ``groups=None`` gives ungrouped (B, N, L) B/C."""
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    bc_shape = (bsz, n_state, length) if groups is None else (bsz, groups, n_state, length)
    return {
        "u": rnd(bsz, dim, length),
        "delta": 0.5 * torch.rand(bsz, dim, length, device=device, dtype=dtype) + 0.01,  # valid raw or softplus
        "A": -a_scale * torch.rand(dim, n_state, device=device, dtype=dtype) - 0.05,
        "B": rnd(*bc_shape) / math.sqrt(n_state),
        "C": rnd(*bc_shape),
        "D": rnd(dim),
        "z": rnd(bsz, dim, length),
        "delta_bias": 0.1 * rnd(dim),
    }


def run_with_grads(fn: Any, ops: dict[str, torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Output, last state and the gradients of a fixed random projection of both."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in ops.items()}
    y, last = fn(**leaves, return_last_state=True, **kwargs)
    gen = torch.Generator(device="cpu").manual_seed(123)
    wy = torch.randn(y.shape, generator=gen).to(y)
    wl = torch.randn(last.shape, generator=gen).to(last)
    grads = torch.autograd.grad((y * wy).sum() + (last * wl).sum(), list(leaves.values()))
    return y.detach(), last.detach(), dict(zip(leaves, grads))


# ∂/∂A sums B·L·(terms of both signs) per element: in float32 the *reference itself* is off
# from the float64 value by up to ~1.5e-5 there (and the chunked form by ~2.5e-5), so that one
# gradient is compared at 3x the tolerance. test_float64_exact checks it without rounding.
GRAD_TOL_FACTOR = {"A": 3.0}


def assert_same_scan(got: tuple, expected: tuple, tol: float) -> None:
    (y1, l1, g1), (y0, l0, g0) = got, expected
    torch.testing.assert_close(y1, y0, atol=tol, rtol=tol)
    torch.testing.assert_close(l1, l0, atol=tol, rtol=tol)
    for name in g0:
        t = tol * GRAD_TOL_FACTOR.get(name, 1.0)
        torch.testing.assert_close(g1[name], g0[name], atol=t, rtol=t, msg=lambda m, name=name: f"grad of {name}: {m}")


class TestSelectiveScanRef:
    def test_smoke(self, device: torch.device, dtype: torch.dtype) -> None:
        ops = make_operands(device=device, dtype=dtype)
        y = selective_scan_ref(**ops, delta_softplus=True)
        assert y.dtype == dtype and y.device.type == device.type and torch.isfinite(y).all()

    @pytest.mark.parametrize("groups", [None, 1, 4])
    def test_cardinality(self, groups: int | None) -> None:
        ops = make_operands(bsz=3, dim=8, n_state=5, length=11, groups=groups)
        y, last = selective_scan_ref(**ops, return_last_state=True)
        assert y.shape == (3, 8, 11) and last.shape == (3, 8, 5)

    def test_hand_computed(self) -> None:
        # A = -ln 2 makes the decays exp(Δ A) = 0.5, 0.5, 0.25 for Δ = 1, 1, 2.
        u, delta = torch.tensor([[[2.0, 1.0, 4.0]]]), torch.tensor([[[1.0, 1.0, 2.0]]])
        A = torch.tensor([[-math.log(2.0)]])
        B, C, D = torch.tensor([[[1.0, 2.0, 1.0]]]), torch.tensor([[[1.0, 1.0, 2.0]]]), torch.tensor([0.5])
        # h = 2, 0.5·2 + 2 = 3, 0.25·3 + 8 = 8.75;  y = C h + D u = 3, 3.5, 19.5
        y, last = selective_scan_ref(u, delta, A, B, C, D, return_last_state=True)
        torch.testing.assert_close(y, torch.tensor([[[3.0, 3.5, 19.5]]]))
        torch.testing.assert_close(last, torch.tensor([[[8.75]]]))
        # softplus(δ + bias) = 1 when δ + bias = ln(e - 1); the gate multiplies by silu(z).
        raw = torch.full((1, 1, 3), math.log(math.e - 1.0) - 0.25)
        z = torch.tensor([[[1.0, -1.0, 2.0]]])
        y = selective_scan_ref(u, raw, A, B, C, D, z=z, delta_bias=torch.tensor([0.25]), delta_softplus=True)
        h = [2.0, 0.5 * 2.0 + 2.0, 0.5 * 3.0 + 4.0]
        expected = [(c * hh + 0.5 * uu) * zz / (1 + math.exp(-zz))
                    for c, hh, uu, zz in zip([1.0, 1.0, 2.0], h, [2.0, 1.0, 4.0], [1.0, -1.0, 2.0])]
        torch.testing.assert_close(y, torch.tensor([[expected]]))

    def test_exception(self) -> None:
        ops = make_operands(dim=8, n_state=4, length=5, groups=2)
        with pytest.raises(ShapeError, match=r"A: expected D=8 in layout \(D N\), got shape \(6, 4\)"):
            selective_scan_ref(**{**ops, "A": ops["A"][:6]})
        with pytest.raises(ShapeError, match="D=8 of u is not divisible by the number of groups G=3"):
            selective_scan_ref(**{**ops, "B": torch.randn(2, 3, 4, 5), "C": torch.randn(2, 3, 4, 5)})
        with pytest.raises(ShapeError, match=r"B: expected layout \(B, N, L\) or grouped \(B, G, N, L\)"):
            selective_scan_ref(**{**ops, "B": torch.randn(2, 4)})
        with pytest.raises(ShapeError, match="B and C must have the same shape"):
            selective_scan_ref(**{**ops, "C": torch.randn(2, 4, 5)})
        with pytest.raises(ShapeError, match=r"delta: expected L=5"):
            selective_scan_ref(**{**ops, "delta": ops["delta"][..., :4]})
        with pytest.raises(ShapeError, match=r"delta_bias: expected D=8"):
            selective_scan_ref(**{**ops, "delta_bias": torch.zeros(7)})
        with pytest.raises(ShapeError, match="sequence length L >= 1"):
            selective_scan_ref(**{k: v[..., :0] if v.dim() >= 3 else v for k, v in ops.items()})

    def test_noncontiguous(self) -> None:
        ops = make_operands(length=9)
        strided = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() >= 2 else v
                   for k, v in ops.items()}
        assert not strided["u"].is_contiguous()
        torch.testing.assert_close(selective_scan_ref(**strided), selective_scan_ref(**ops))

    def test_half_input_computes_in_float32(self) -> None:
        ops = make_operands(length=9)
        y = selective_scan_ref(**{k: v.to(torch.bfloat16) for k, v in ops.items()})
        expected = selective_scan_ref(**{k: v.to(torch.bfloat16).float() for k, v in ops.items()})
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)

    def test_gradcheck(self) -> None:
        ops = make_operands(bsz=1, dim=2, n_state=2, length=4, groups=1, dtype=torch.float64)
        leaves = tuple(ops[k].requires_grad_() for k in GRAD_INPUTS)
        assert torch.autograd.gradcheck(lambda *a: selective_scan_ref(*a, delta_softplus=True), leaves)


class TestSelectiveScanChunked:
    def test_smoke(self, device: torch.device, dtype: torch.dtype) -> None:
        ops = make_operands(device=device, dtype=dtype)
        y = selective_scan_chunked(**ops, delta_softplus=True, chunk_size=8)
        assert y.dtype == dtype and y.device.type == device.type and y.is_contiguous()

    @pytest.mark.parametrize("length, chunk_size", [(11, 4), (11, 64), (12, 3), (1, 8)])
    def test_cardinality(self, length: int, chunk_size: int) -> None:
        ops = make_operands(bsz=3, n_state=5, length=length, groups=None)
        y, last = selective_scan_chunked(**ops, return_last_state=True, chunk_size=chunk_size)
        assert y.shape == (3, 8, length) and last.shape == (3, 8, 5)

    @pytest.mark.parametrize("groups", [None, 1, 2, 8])
    @pytest.mark.parametrize("options", [(), ("D",), ("z",), ("delta_bias",), OPTION_NAMES],
                             ids=["plain", "D", "z", "bias", "all"])
    @pytest.mark.parametrize("softplus", [False, True], ids=["raw", "softplus"])
    def test_matches_reference(self, groups: int | None, options: tuple[str, ...], softplus: bool) -> None:
        ops = make_operands(length=37, groups=groups)
        ops = {k: v for k, v in ops.items() if k not in OPTION_NAMES or k in options}
        got = run_with_grads(selective_scan_chunked, ops, delta_softplus=softplus, chunk_size=8)
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=softplus), tol=1e-5)

    @pytest.mark.parametrize("groups", [None, 2])
    def test_float64_exact(self, groups: int | None) -> None:
        ops = make_operands(length=45, groups=groups, dtype=torch.float64)
        got = run_with_grads(selective_scan_chunked, ops, delta_softplus=True, chunk_size=4)
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=True), tol=1e-12)

    @pytest.mark.parametrize("length, chunk_size", [(50, 7), (64, 16), (5, 64), (40, 1), (2, 3)])
    def test_any_length_and_chunk_size(self, length: int, chunk_size: int) -> None:
        ops = make_operands(length=length)
        got = run_with_grads(selective_scan_chunked, ops, delta_softplus=True, chunk_size=chunk_size)
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=True), tol=1e-5)

    def test_long_sequence_strong_decay(self) -> None:
        # Δ·A reaches about -170 per step and -1e4 summed over a chunk (exp(-cumsum)
        # formulations overflow), while channels with A near -0.05 carry state across
        # thousands of steps: the chunked form must stay finite and exact.
        ops = make_operands(bsz=1, dim=4, n_state=4, length=3000, groups=2, a_scale=50.0)
        ops["delta"] = 3.0 * ops["delta"].abs() + 2.0
        got = run_with_grads(selective_scan_chunked, ops, delta_softplus=True, chunk_size=64)
        assert all(torch.isfinite(g).all() for g in got[2].values())
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=True), tol=1e-5)

    def test_return_last_state(self) -> None:
        ops = make_operands(length=29)
        y, last = selective_scan_chunked(**ops, return_last_state=True, chunk_size=6)
        y_ref, last_ref = selective_scan_ref(**ops, return_last_state=True)
        torch.testing.assert_close(last, last_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, selective_scan_chunked(**ops, chunk_size=6))

    def test_noncontiguous(self) -> None:
        ops = make_operands(length=21)
        strided = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() >= 2 else v
                   for k, v in ops.items()}
        torch.testing.assert_close(selective_scan_chunked(**strided, chunk_size=8), selective_scan_ref(**ops),
                                   atol=1e-5, rtol=1e-5)

    def test_half_input_computes_in_float32(self) -> None:
        ops = {k: v.to(torch.bfloat16) for k, v in make_operands(length=21).items()}
        y = selective_scan_chunked(**ops, chunk_size=8)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, selective_scan_ref(**ops))

    def test_exception(self) -> None:
        ops = make_operands(length=5)
        with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
            selective_scan_chunked(**ops, chunk_size=0)
        with pytest.raises(ShapeError, match=r"z: expected D=8"):
            selective_scan_chunked(**{**ops, "z": torch.randn(2, 4, 5)})

    def test_gradcheck(self) -> None:
        ops = make_operands(bsz=1, dim=4, n_state=2, length=7, groups=2, dtype=torch.float64)
        leaves = tuple(ops[k].requires_grad_() for k in GRAD_INPUTS)

        def scan(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return selective_scan_chunked(*args, delta_softplus=True, return_last_state=True, chunk_size=3)

        assert torch.autograd.gradcheck(scan, leaves)

    def test_no_grad_inputs(self) -> None:
        """Gradients flow to the inputs that ask for them only (here u alone)."""
        ops = make_operands(length=10)
        u = ops.pop("u").requires_grad_()
        (grad,) = torch.autograd.grad(selective_scan_chunked(u, **ops, chunk_size=4).sum(), [u])
        (expected,) = torch.autograd.grad(selective_scan_ref(u, **ops).sum(), [u])
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


class ScanModule(torch.nn.Module):
    """All operands as inputs, so the export keeps every one of them as a graph input."""

    def forward(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor, z: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, chunk_size=8)


def _onnx_parity(model_bytes: bytes, args: tuple[torch.Tensor, ...]) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    assert len(inputs) == len(args), [i.name for i in inputs]
    (out,) = session.run(None, {i.name: a.numpy() for i, a in zip(inputs, args)})
    torch.testing.assert_close(torch.from_numpy(out), selective_scan_ref(*args, delta_softplus=True),
                               atol=1e-5, rtol=1e-5)


class TestSelectiveScanOnnx:
    def test_export_torchscript(self) -> None:
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        args = tuple(make_operands(bsz=1, length=21).values())
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
            torch.onnx.export(ScanModule().eval(), args, buf, dynamo=False, input_names=list(GRAD_INPUTS))
        _onnx_parity(buf.getvalue(), args)

    @pytest.mark.slow
    def test_export_dynamo(self) -> None:
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
        args = tuple(make_operands(bsz=1, length=21).values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ScanModule().eval(), args, dynamo=True, verbose=False)
        ops = {node.op_type for node in program.model_proto.graph.node}
        assert ops <= {"Add", "ConstantOfShape", "Exp", "Gather", "Mul", "Pad", "ReduceSum", "Reshape",
                       "ScatterElements", "ScatterND", "Sigmoid", "Slice", "Softplus", "Transpose", "Unsqueeze",
                       "Concat", "Expand", "Greater", "Where", "Identity", "Constant", "Squeeze", "Cast",
                       "Scan"}, ops
        assert "Scan" in ops  # the export form (scan_export), not hundreds of unrolled steps
        _onnx_parity(program.model_proto.SerializeToString(), args)


class TestSelectiveScanDispatch:
    def test_backends_agree(self) -> None:
        ops = make_operands(length=17)
        ref = selective_scan_ref(**ops, delta_softplus=True)
        for backend in ("auto", "chunked", "ref"):
            torch.testing.assert_close(selective_scan(**ops, delta_softplus=True, backend=backend), ref,
                                       atol=1e-5, rtol=1e-5)

    def test_exception(self) -> None:
        ops = make_operands(length=5)
        with pytest.raises(ValueError, match=r"Unknown selective-scan backend 'fast'; supported backends: \['auto'"):
            selective_scan(**ops, backend="fast")

    @pytest.mark.skipif(has_cuda_scan(), reason="mamba-ssm's kernel is available here")
    def test_cuda_backend_explains_how_to_get_it(self) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        hint = "pip install mamba-ssm" if torch.cuda.is_available() else "needs a CUDA device"
        with pytest.raises(RuntimeError, match=hint):
            selective_scan(**make_operands(length=5, device=device), backend="cuda")

    def test_env_var_disables_cuda_scan(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DISABLE_ENV_VAR, "1")
        assert has_cuda_scan() is False
        with pytest.raises(RuntimeError, match=DISABLE_ENV_VAR):
            selective_scan(**make_operands(length=5), backend="cuda")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
    def test_no_cuda_scan_without_cuda(self) -> None:
        assert has_cuda_scan() is False


class TestSelectiveScanModule:
    def test_module(self) -> None:
        ops = make_operands(length=13)
        module = SelectiveScan(delta_softplus=True, backend="chunked", chunk_size=4)
        torch.testing.assert_close(module(**ops), selective_scan_chunked(**ops, delta_softplus=True, chunk_size=4))
        y, last = module(**ops, return_last_state=True)
        assert last.shape == (2, 8, 4)
        assert "backend='chunked'" in repr(module)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="Unknown selective-scan backend 'fast'"):
            SelectiveScan(backend="fast")
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            SelectiveScan(chunk_size=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestSelectiveScanCuda:
    def test_chunked_on_cuda_matches_reference(self) -> None:
        ops = make_operands(length=300, device="cuda")
        got = run_with_grads(selective_scan_chunked, ops, delta_softplus=True, chunk_size=32)
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=True), tol=1e-4)

    @pytest.mark.skipif(not has_cuda_scan(), reason="mamba-ssm's CUDA kernel is not importable")
    @pytest.mark.parametrize("groups", [None, 2])
    def test_kernel_matches_reference(self, groups: int | None) -> None:
        ops = make_operands(length=300, groups=groups, device="cuda")
        got = run_with_grads(selective_scan, ops, delta_softplus=True, backend="cuda")
        assert_same_scan(got, run_with_grads(selective_scan_ref, ops, delta_softplus=True), tol=1e-4)
