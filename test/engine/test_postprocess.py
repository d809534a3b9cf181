"""Post-processing: label maps from logits, uint8 fused images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ivf_perception.engine import postprocess
from ivf_perception.engine.postprocess import logits_to_labels, make_overlay, to_uint8_rgb
from ivf_perception.io.classes import MFNET_PALETTE, colorize_labels
from ivf_perception.models.ops._backend import has_cpu_labels


@pytest.mark.parametrize("shape", [(1, 9, 48, 64), (3, 15, 17, 23), (2, 1, 5, 7)])
def test_labels_equal_the_argmax_over_the_class_axis(shape: tuple[int, int, int, int]) -> None:
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    labels = logits_to_labels(logits)
    assert labels.dtype == np.uint8 and labels.shape == (shape[0], shape[2], shape[3])
    np.testing.assert_array_equal(labels, logits.argmax(dim=1).numpy())


def test_ties_resolve_to_the_lowest_class_id() -> None:
    logits = torch.zeros(1, 4, 3, 3)
    logits[0, 1:, 0, 0] = 2.0  # classes 1, 2, 3 tie
    logits[0, 3, 1, 1] = 1.0
    labels = logits_to_labels(logits)
    assert labels[0, 0, 0] == 1 and labels[0, 1, 1] == 3 and labels[0, 2, 2] == 0


def test_more_classes_than_mono8_holds_are_refused() -> None:
    with pytest.raises(ValueError, match="257 classes do not fit a mono8"):
        logits_to_labels(torch.zeros(1, 257, 2, 2))


def test_fused_images_round_to_the_nearest_level() -> None:
    fused = torch.tensor([0.0, 0.6 / 255, 1.49 / 255, 1.0, 1.2]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8_rgb(fused)
    assert out.shape == (1, 1, 5, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 1, 1, 255, 255])


def _reference_uint8(fused: torch.Tensor) -> np.ndarray:
    """The torch implementation the OpenCV path replaced on the CPU."""
    x = fused.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.mark.parametrize("shape", [(1, 3, 480, 640), (2, 3, 17, 23), (1, 3, 1, 1)])
def test_fused_uint8_equals_torch_clamp_round_cast(shape: tuple[int, int, int, int]) -> None:
    g = torch.Generator().manual_seed(1)
    fused = torch.rand(*shape, generator=g) * 1.4 - 0.2  # out-of-range values on both sides
    fused.view(-1)[::5] = torch.arange(0, fused.numel(), 5).remainder(256).float().add(0.5) / 255  # exact halves
    np.testing.assert_array_equal(to_uint8_rgb(fused), _reference_uint8(fused))


def test_fused_uint8_of_a_non_contiguous_batch() -> None:
    fused = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(2))[:, :, 2:18, 1:29]
    np.testing.assert_array_equal(to_uint8_rgb(fused), _reference_uint8(fused))


@pytest.mark.parametrize("classes", [2, 9, 41])
def test_labels_equal_argmax_at_camera_size_with_ties(classes: int) -> None:
    logits = torch.randint(-3, 3, (1, classes, 480, 640), generator=torch.Generator().manual_seed(classes)).float()
    labels = logits_to_labels(logits)  # integer logits: ties everywhere, the first maximum must win
    np.testing.assert_array_equal(labels, logits.argmax(dim=1).numpy())


def test_overlay_equals_blend_with_class_zero_transparent() -> None:

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), np.uint8)
    labels = rng.integers(0, 9, (48, 64), np.uint8)
    blended = cv2.addWeighted(rgb, 0.7, colorize_labels(labels, MFNET_PALETTE), 0.3, 0.0)
    expected = np.where((labels > 0)[..., None], blended, rgb)
    np.testing.assert_array_equal(make_overlay(rgb, labels, MFNET_PALETTE, 0.3), expected)


# ---- the C++ extension's labels_argmax (channels-last logits) and its NumPy/OpenCV fallback

_needs_kernel = pytest.mark.skipif(not has_cpu_labels(), reason="fused CPU extension not built here "
                                   "(python setup.py build_ext --inplace)")


def _logit_layouts(seed: int, classes: int = 9) -> list[torch.Tensor]:
    """Integer-valued logits (ties everywhere) as NCHW, channels-last, and a cropped channels-last view."""
    logits = torch.randint(-3, 3, (2, classes, 37, 53), generator=torch.Generator().manual_seed(seed)).float()
    cl = logits.contiguous(memory_format=torch.channels_last)
    return [logits, cl, cl[..., 3:30, 5:48]]


@_needs_kernel
@pytest.mark.parametrize("classes", [1, 2, 9, 256])
def test_kernel_labels_equal_argmax_in_every_layout(classes: int) -> None:
    for logits in _logit_layouts(classes, classes):
        labels = torch.ops.ivf_perception.labels_argmax(logits)
        assert labels.dtype == torch.uint8 and labels.shape == (logits.shape[0], *logits.shape[2:])
        np.testing.assert_array_equal(labels.numpy(), logits.argmax(dim=1).numpy())


@_needs_kernel
def test_kernel_lets_no_nan_win_and_gives_class_zero_to_all_nan_pixels() -> None:
    logits = torch.zeros(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    logits[0, :, 0, 0] = torch.tensor([float("nan"), 1.0, 0.5])
    logits[0, :, 0, 1] = torch.tensor([0.0, float("nan"), -1.0])
    logits[0, :, 1, 0] = float("nan")
    logits[0, :, 1, 1] = torch.tensor([float("-inf"), float("-inf"), float("-inf")])
    labels = torch.ops.ivf_perception.labels_argmax(logits)
    assert labels[0].tolist() == [[1, 0], [0, 0]]


@_needs_kernel
def test_kernel_refuses_bad_logits() -> None:
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.ivf_perception.labels_argmax(torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"must be \(B, K, H, W\)"):
        torch.ops.ivf_perception.labels_argmax(torch.zeros(2, 3, 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_and_fallback_labels_are_identical(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    layouts = _logit_layouts(seed)
    with_kernel = [logits_to_labels(x) for x in layouts]
    monkeypatch.setattr(postprocess, "has_cpu_labels", lambda: False)  # the NumPy/OpenCV path
    without = [logits_to_labels(x) for x in layouts]
    for a, b, x in zip(with_kernel, without, layouts):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, x.argmax(dim=1).numpy())
