"""Optional compiled kernels, discovered lazily so every model imports on any machine.

``mamba_ssm.ops.selective_scan_interface`` loads its compiled CUDA extension at import time
(and fails with ``ImportError`` or ``OSError`` when the extension, the CUDA runtime or a
matching torch build is missing). We therefore never import it at module level: the first
call to :func:`has_cuda_scan` tries once and caches the outcome, the way timm gates apex
(``has_apex``) and fused attention (``use_fused_attn``). Setting the environment variable
``IVF_DISABLE_CUDA_SCAN=1`` turns the kernel off without uninstalling it, for A/B checks.

Our own Triton kernel (:mod:`.scan_triton`) is discovered the same way: Triton comes with CUDA
builds of torch but not with every CPU build, so :func:`has_triton_scan` imports it once, on
first use; ``IVF_DISABLE_TRITON_SCAN=1`` turns it off.

The fused CPU scan is this package's own C++ extension ``ivf_perception.models.ops._cpu_scan``
(source ``csrc/selective_scan_cpu.cpp``), compiled by ``setup.py`` at install time (``make venv``,
``pip install -e .``, colcon) when torch and a C++ compiler are there. It is optional in the same
way: :func:`has_cpu_scan` imports it once, logs one line when it cannot (not built, or built for
another torch), and ``IVF_DISABLE_CPU_SCAN=1`` turns it off.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable

import torch

__all__ = ["CPU_DISABLE_ENV_VAR", "DISABLE_ENV_VAR", "DISABLE_TRITON_ENV_VAR", "get_cuda_scan", "get_triton_scan",
           "has_cpu_labels", "has_cpu_scan", "has_cuda_scan", "has_triton_scan"]

_log = logging.getLogger(__name__)

DISABLE_ENV_VAR = "IVF_DISABLE_CUDA_SCAN"
"""Environment variable that, set to 1/true/yes/on, forces :func:`has_cuda_scan` to False."""

DISABLE_TRITON_ENV_VAR = "IVF_DISABLE_TRITON_SCAN"
"""Environment variable that, set to 1/true/yes/on, forces :func:`has_triton_scan` to False."""

_INSTALL_HINT = (
    "install mamba-ssm built for this torch and CUDA version "
    "(`pip install mamba-ssm --no-build-isolation`, see https://github.com/state-spaces/mamba), "
    "or use scan_backend='chunked' (pure PyTorch, same results)"
)


CPU_DISABLE_ENV_VAR = "IVF_DISABLE_CPU_SCAN"
"""Environment variable that, set to 1/true/yes/on, forces :func:`has_cpu_scan` to False."""

CPU_SCAN_MODULE = "ivf_perception.models.ops._cpu_scan"
"""The compiled extension; importing it registers the ``torch.ops.ivf_perception`` operators."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _disabled_by_env() -> bool:
    return _env_flag(DISABLE_ENV_VAR)


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


@functools.cache
def _load_cpu_scan() -> bool:
    """Import the extension once; a failure is logged once and means "use the chunked scan"."""
    try:
        importlib.import_module(CPU_SCAN_MODULE)
    except Exception as err:  # not built (ImportError), built for another torch (undefined symbol), ...
        _log.warning(
            "fused CPU selective scan unavailable (%s: %s); using the chunked PyTorch scan (same results, "
            "slower). Build it with `python setup.py build_ext --inplace` or reinstall the package.",
            type(err).__name__, err,
        )
        return False
    return True


def has_cpu_scan() -> bool:
    """Whether the fused CPU selective scan (``torch.ops.ivf_perception``) can be used.

    False when ``IVF_DISABLE_CPU_SCAN`` is set or the extension does not load; the import is
    attempted at most once per process.
    """
    return not _env_flag(CPU_DISABLE_ENV_VAR) and _load_cpu_scan()


def has_cpu_labels() -> bool:
    """Whether the same extension's ``labels_argmax`` (logits -> uint8 class ids) can be used.

    Also False for an extension built before that operator was added, so a stale in-place build
    keeps the NumPy/OpenCV path instead of failing; ``IVF_DISABLE_CPU_SCAN`` turns it off too.
    """
    return has_cpu_scan() and hasattr(torch.ops.ivf_perception, "labels_argmax")


@functools.cache
def _import_triton_scan() -> tuple[Callable[..., object] | None, str]:
    """Import our Triton kernel module once; returns (function or None, reason if None)."""
    try:
        from ivf_perception.models.ops.scan_triton import selective_scan_triton
    except ImportError as err:  # triton not installed (CPU builds of torch)
        return None, f"{type(err).__name__}: {err}"
    return selective_scan_triton, ""


def has_triton_scan() -> bool:
    """Whether our Triton selective scan can be used in this process: CUDA is available,
    ``IVF_DISABLE_TRITON_SCAN`` is not set and ``triton`` imports (tried at most once)."""
    if _env_flag(DISABLE_TRITON_ENV_VAR) or not torch.cuda.is_available():
        return False
    return _import_triton_scan()[0] is not None


def get_triton_scan() -> Callable[..., object]:
    """:func:`~ivf_perception.models.ops.scan_triton.selective_scan_triton`, or a ``RuntimeError``
    that says why it cannot be used. Needs no CUDA device itself: the kernel runs on CPU tensors
    under Triton's interpreter (``TRITON_INTERPRET=1``) and refuses them otherwise."""
    if _env_flag(DISABLE_TRITON_ENV_VAR):
        raise RuntimeError(
            f"the Triton selective scan is disabled by the environment variable {DISABLE_TRITON_ENV_VAR}; "
            "unset it or use scan_backend='chunked'"
        )
    fn, reason = _import_triton_scan()
    if fn is None:
        raise RuntimeError(f"the Triton selective scan needs the triton package ({reason}); "
                           "`pip install triton` (CUDA builds of torch include it), or use scan_backend='chunked'")
    return fn
