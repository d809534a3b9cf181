"""The export form of the selective scan (scan operators instead of Python loops) equals the
sequential reference, and ``auto`` picks it only while exporting."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from ivf_perception.models.ops import selective_scan, selective_scan_ref
from ivf_perception.models.ops.scan_export import selective_scan_export


@pytest.mark.parametrize(("length", "groups", "chunk"), [(1, 1, 64), (7, 2, 4), (100, 4, 16), (257, 1, 64)])
def test_equals_reference(length: int, groups: int, chunk: int) -> None:
    bsz, dim, n = 2, 8, 3
    u, dt, z = torch.randn(bsz, dim, length), torch.randn(bsz, dim, length), torch.randn(bsz, dim, length)
    A = -torch.rand(dim, n) * 4
    B, C = torch.randn(bsz, groups, n, length), torch.randn(bsz, groups, n, length)
    D, bias = torch.randn(dim), torch.randn(dim)
    y_ref, h_ref = selective_scan_ref(u, dt, A, B, C, D, z, bias, True, return_last_state=True)
    y, h = selective_scan_export(u, dt, A, B, C, D, z, bias, True, return_last_state=True, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)


def test_auto_picks_the_export_form_only_while_exporting() -> None:
    args = (torch.randn(1, 4, 9), torch.rand(1, 4, 9), -torch.rand(4, 2), torch.randn(1, 2, 9), torch.randn(1, 2, 9))
    with mock.patch("ivf_perception.models.ops.scan_export.selective_scan_export",
                    wraps=selective_scan_export) as spy:
        selective_scan(*args)
        assert spy.call_count == 0
        with mock.patch.object(torch.compiler, "is_exporting", return_value=True):
            torch.testing.assert_close(selective_scan(*args), selective_scan_ref(*args), atol=1e-5, rtol=1e-5)
        assert spy.call_count == 1
