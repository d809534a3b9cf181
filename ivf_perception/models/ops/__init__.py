"""Shared tensor operations (function first, module second) with optional compiled kernels.

Everything here imports on a CPU-only machine: compiled kernels (mamba-ssm) are looked up
lazily by :mod:`ivf_perception.models.ops._backend`
(mamba-ssm's, and our Triton scan in :mod:`.scan_triton`).
"""

from ivf_perception.models.ops._backend import get_cuda_scan, get_triton_scan, has_cuda_scan, has_triton_scan
from ivf_perception.models.ops.selective_scan import (
    SCAN_BACKENDS,
    SelectiveScan,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from ivf_perception.models.ops.wavelet import DWT2, IDWT2, dwt2, idwt2, pack_subbands, unpack_subbands

__all__ = [
    "SCAN_BACKENDS",
    "SelectiveScan",
    "get_cuda_scan",
    "get_triton_scan",
    "has_cuda_scan",
    "has_triton_scan",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "DWT2",
    "IDWT2",
    "dwt2",
    "idwt2",
    "pack_subbands",
    "unpack_subbands",
]
