"""The Triton selective scan against the sequential reference, and its place in the dispatch.

No GPU here: the kernel itself is checked on CPU tensors under Triton's NumPy interpreter
(``TRITON_INTERPRET=1``) in a child process (the variable must be set before ``triton`` is
imported, and must not leak into this process). The same kernel source runs compiled on CUDA
in the ``gpu``-marked class, which CI skips; ``make gpu-check`` runs it on a GPU machine.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ivf_perception.models.ops import selective_scan, selective_scan_chunked, selective_scan_ref
from ivf_perception.models.ops._backend import DISABLE_TRITON_ENV_VAR, has_triton_scan

triton = pytest.importorskip("triton", reason="triton is not installed (CPU builds of torch lack it)")

REPO_ROOT = Path(__file__).resolve().parents[2]
# The module itself (the package re-exports a function of the same name, which shadows it).
SCAN_MODULE = importlib.import_module("ivf_perception.models.ops.selective_scan")

# Runs in the child: every case computes the Triton kernel (interpreted, CPU tensors) and the
# reference on the same operands and reports max |difference| and max |reference| per output.
_CHILD = r"""
import json, sys, torch
from ivf_perception.models.ops.scan_triton import selective_scan_triton
from ivf_perception.models.ops.selective_scan import selective_scan_ref

def operands(bsz, dim, n, length, groups, seed, a_scale=1.0, delta_shift=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    bc = (bsz, n, length) if groups is None else (bsz, groups, n, length)
    ops = dict(u=r(bsz, dim, length), delta=0.5 * torch.rand(bsz, dim, length, generator=g) + 0.01 + delta_shift,
               A=-a_scale * torch.rand(dim, n, generator=g) - 0.05, B=r(*bc) / n ** 0.5, C=r(*bc),
               D=r(dim), z=r(bsz, dim, length), delta_bias=0.1 * r(dim))
    return {k: v.to(dtype) for k, v in ops.items()}

def drop(ops, *names):
    return {k: v for k, v in ops.items() if k not in names}

cases = {
    # D = 40: two channel blocks, the second one partly masked; N = 5 pads to 8; odd L
    "odd_length_groups": (operands(2, 40, 5, 37, 4, 0), True),
    "length_1": (operands(1, 8, 4, 1, 2, 1), True),
    "ungrouped_bc_no_options": (drop(operands(2, 8, 4, 23, None, 2), "D", "z", "delta_bias"), False),
    "only_skip_no_softplus": (drop(operands(1, 16, 16, 19, 8, 3), "z", "delta_bias"), False),
    # exp(Δ A) underflows to 0 every step (A ~ -50, Δ up to ~25, past softplus' threshold of 20)
    "strong_decay": (operands(2, 8, 4, 29, 2, 4, a_scale=50.0, delta_shift=24.8), True),
    "per_channel_groups": (operands(1, 6, 3, 11, 6, 5), True),
    # several time tiles with a ragged tail; D = 5 leaves the second channel block 1/4 full
    "multi_tile_ragged": (operands(1, 5, 3, 100, 1, 8), True),
    "float16_inputs": (operands(1, 8, 4, 17, 2, 6, dtype=torch.float16), True),
}
out = {}
for name, (ops, softplus) in cases.items():
    y, last = selective_scan_triton(**ops, delta_softplus=softplus, return_last_state=True)
    y0, last0 = selective_scan_ref(**ops, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == ops["u"].dtype and y.shape == y0.shape and last.dtype == torch.float32, name
    out[name] = {"y": (y.float() - y0.float()).abs().max().item(), "y_ref": y0.float().abs().max().item(),
                 "last": (last - last0).abs().max().item(), "last_ref": last0.abs().max().item()}
# a non-contiguous u (a transposed view) gives the same result as its contiguous copy
ops = operands(1, 8, 4, 13, 2, 7)
u_nc = ops["u"].transpose(1, 2).contiguous().transpose(1, 2)
y_nc = selective_scan_triton(**{**ops, "u": u_nc}, delta_softplus=True)
out["noncontiguous"] = {"y": (y_nc - selective_scan_ref(**ops, delta_softplus=True)).abs().max().item(),
                        "y_ref": 1.0, "last": 0.0, "last_ref": 0.0}
print(json.dumps(out))
"""

TOLERANCE = {"float16_inputs": 1e-2}  # y is rounded to float16 (the state is not)


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict[str, float]]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASES = ["odd_length_groups", "length_1", "ungrouped_bc_no_options", "only_skip_no_softplus", "strong_decay",
         "per_channel_groups", "multi_tile_ragged", "float16_inputs", "noncontiguous"]


class TestTritonKernelInterpreted:
    """The kernel's arithmetic, on CPU through Triton's interpreter (not a GPU compile)."""

    @pytest.mark.parametrize("case", CASES)
    def test_matches_reference(self, interpreted_results: dict[str, dict[str, float]], case: str) -> None:
        r = interpreted_results[case]
        tol = TOLERANCE.get(case, 1e-5)
        assert r["y"] <= tol * max(1.0, r["y_ref"]), r
        assert r["last"] <= 1e-5 * max(1.0, r["last_ref"]), r

    def test_cases_are_not_trivial(self, interpreted_results: dict[str, dict[str, float]]) -> None:
        """A kernel that wrote zeros would pass against a zero reference: outputs must be O(1)."""
        assert set(interpreted_results) == set(CASES)
        assert all(r["y_ref"] > 0.1 for r in interpreted_results.values())


class TestTritonDispatchOnCpu:
    def test_auto_on_cpu_stays_chunked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("the Triton kernel must not be used for CPU tensors")

        monkeypatch.setattr(SCAN_MODULE, "get_triton_scan", lambda: forbidden)
        monkeypatch.setattr(SCAN_MODULE, "has_triton_scan", lambda: True)  # even where Triton could run
        torch.manual_seed(0)
        u, dt = torch.randn(1, 4, 9), torch.rand(1, 4, 9)
        A, B, C = -torch.rand(4, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
        torch.testing.assert_close(selective_scan(u, dt, A, B, C), selective_scan_ref(u, dt, A, B, C))

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
    def test_no_triton_scan_without_cuda(self) -> None:
        assert has_triton_scan() is False

    def test_forced_triton_on_cpu_explains(self) -> None:
        u, dt = torch.randn(1, 4, 9), torch.rand(1, 4, 9)
        A, B, C = -torch.rand(4, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
        with pytest.raises(RuntimeError, match="needs CUDA tensors, got u on cpu"):
            selective_scan(u, dt, A, B, C, backend="triton")

    def test_env_var_disables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(DISABLE_TRITON_ENV_VAR, "1")
        assert has_triton_scan() is False
        u, dt = torch.randn(1, 4, 9), torch.rand(1, 4, 9)
        A, B, C = -torch.rand(4, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
        with pytest.raises(RuntimeError, match=DISABLE_TRITON_ENV_VAR):
            selective_scan(u, dt, A, B, C, backend="triton")

    def test_kernel_refuses_float64_gradients_and_cpu(self) -> None:
        from ivf_perception.models.ops.scan_triton import selective_scan_triton

        u, dt = torch.randn(1, 4, 9), torch.rand(1, 4, 9)
        A, B, C = -torch.rand(4, 3), torch.randn(1, 3, 9), torch.randn(1, 3, 9)
        with pytest.raises(RuntimeError, match="float16, bfloat16 or float32, got u as torch.float64"):
            selective_scan_triton(u.double(), dt.double(), A.double(), B.double(), C.double())
        with pytest.raises(RuntimeError, match="no backward pass"):
            selective_scan_triton(u.requires_grad_(), dt, A, B, C)
        with pytest.raises(RuntimeError, match="needs CUDA tensors, got u on cpu"):
            selective_scan_triton(u.detach(), dt, A, B, C)


def _cuda_operands(length: int, dtype: torch.dtype = torch.float32, groups: int | None = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    bc = (2, 16, length) if groups is None else (2, groups, 16, length)
    ops = {"u": torch.randn(2, 64, length, generator=g), "delta": torch.randn(2, 64, length, generator=g) * 0.5 - 3,
           "A": -torch.arange(1, 17, dtype=torch.float32).repeat(64, 1), "B": torch.randn(*bc, generator=g),
           "C": torch.randn(*bc, generator=g), "D": torch.ones(64), "z": torch.randn(2, 64, length, generator=g),
           "delta_bias": torch.randn(64, generator=g) * 0.1}
    return {k: v.cuda().to(dtype if k in ("u", "delta", "B", "C", "z") else torch.float32) for k, v in ops.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestTritonScanCuda:
    """The compiled kernel on a real GPU (run by ``make gpu-check``)."""

    @pytest.mark.parametrize("length", [1, 37, 4800])
    @pytest.mark.parametrize("groups", [None, 4])
    def test_matches_reference_fp32(self, length: int, groups: int | None) -> None:
        ops = _cuda_operands(length, groups=groups)
        y, last = selective_scan(**ops, delta_softplus=True, return_last_state=True, backend="triton")
        y0, last0 = selective_scan_ref(**ops, delta_softplus=True, return_last_state=True)
        torch.testing.assert_close(y, y0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(last, last0, atol=1e-4, rtol=1e-4)

    def test_bf16_inputs(self) -> None:
        ops = _cuda_operands(300, dtype=torch.bfloat16)
        y = selective_scan(**ops, delta_softplus=True, backend="triton")
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), selective_scan_ref(**ops, delta_softplus=True).float(),
                                   atol=3e-2, rtol=3e-2)

    def test_auto_uses_triton_for_inference_and_chunked_for_training(self, monkeypatch: pytest.MonkeyPatch) -> None:
        scan_module = SCAN_MODULE
        monkeypatch.setattr(scan_module, "has_cuda_scan", lambda: False)  # as without mamba-ssm
        calls: list[int] = []
        real = scan_module.get_triton_scan()

        def spy(*args: object, **kwargs: object) -> object:
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(scan_module, "get_triton_scan", lambda: spy)
        ops = _cuda_operands(64)
        with torch.no_grad():
            y = selective_scan(**ops, delta_softplus=True)
        assert calls == [1]
        leaves = {k: v.clone().requires_grad_() for k, v in ops.items()}
        y_train = selective_scan(**leaves, delta_softplus=True)
        assert calls == [1]  # gradients went through the chunked form
        y_train.sum().backward()
        torch.testing.assert_close(y, y_train.detach(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(y_train, selective_scan_chunked(**ops, delta_softplus=True), atol=1e-4, rtol=1e-4)
