"""Shared tensor operations (function first, module second) with optional compiled kernels.

Everything here imports on any machine: compiled kernels (mamba-ssm's CUDA scan, our fused CPU
scan, our Triton scan in :mod:`.scan_triton`) are looked up lazily by
:mod:`ivf_perception.models.ops._backend`.
"""

from ivf_perception.models.ops._backend import (
    get_cuda_scan,
    get_triton_scan,
    has_cpu_scan,
    has_cuda_scan,
    has_triton_scan,
)
from ivf_perception.models.ops.cross_selective_scan import cross_selective_scan
from ivf_perception.models.ops.selective_scan import (
    SCAN_BACKENDS,
    SelectiveScan,
    cpu_scan_usable,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from ivf_perception.models.ops.wavelet import DWT2, IDWT2, dwt2, idwt2, pack_subbands, unpack_subbands

__all__ = [
    "SCAN_BACKENDS",
    "SelectiveScan",
    "cpu_scan_usable",
    "cross_selective_scan",
    "get_cuda_scan",
    "get_triton_scan",
    "has_cpu_scan",
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
