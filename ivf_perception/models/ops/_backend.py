"""Optional compiled kernels, discovered lazily so every model imports on a CPU-only machine.

``mamba_ssm.ops.selective_scan_interface`` loads its compiled CUDA extension at import time
(and fails with ``ImportError`` or ``OSError`` when the extension, the CUDA runtime or a
matching torch build is missing). We therefore never import it at module level: the first
call to :func:`has_cuda_scan` tries once and caches the outcome, the way timm gates apex
(``has_apex``) and fused attention (``use_fused_attn``). Setting the environment variable
``IVF_DISABLE_CUDA_SCAN=1`` turns the kernel off without uninstalling it, for A/B checks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

__all__ = ["DISABLE_ENV_VAR", "has_cuda_scan", "get_cuda_scan"]

DISABLE_ENV_VAR = "IVF_DISABLE_CUDA_SCAN"
"""Environment variable that, set to 1/true/yes/on, forces :func:`has_cuda_scan` to False."""

_INSTALL_HINT = (
    "install mamba-ssm built for this torch and CUDA version "
    "(`pip install mamba-ssm --no-build-isolation`, see https://github.com/state-spaces/mamba), "
    "or use scan_backend='chunked' (pure PyTorch, same results)"
)


def _disabled_by_env() -> bool:
    return os.environ.get(DISABLE_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _import_cuda_scan() -> tuple[Callable[..., object] | None, str]:
    """Import mamba-ssm's selective scan once; returns (function or None, reason if None)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as err:  # missing package, extension or CUDA runtime
        return None, f"{type(err).__name__}: {err}"
    return selective_scan_fn, ""


def has_cuda_scan() -> bool:
    """Whether mamba-ssm's fused CUDA selective scan can be used in this process.

    True only when CUDA is available, ``IVF_DISABLE_CUDA_SCAN`` is not set and
    ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` imports. The import is
    attempted at most once per process.
    """
    if _disabled_by_env() or not torch.cuda.is_available():
        return False
    return _import_cuda_scan()[0] is not None


def get_cuda_scan() -> Callable[..., object]:
    """mamba-ssm's ``selective_scan_fn``, or a ``RuntimeError`` that says how to get it."""
    if _disabled_by_env():
        raise RuntimeError(
            f"the CUDA selective scan is disabled by the environment variable {DISABLE_ENV_VAR}; "
            "unset it or use scan_backend='chunked'"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("the CUDA selective scan needs a CUDA device; use scan_backend='chunked' on CPU")
    fn, reason = _import_cuda_scan()
    if fn is None:
        raise RuntimeError(f"mamba-ssm's CUDA selective scan is not importable ({reason}); {_INSTALL_HINT}")
    return fn
