"""Post-processing: label maps from logits, uint8 fused images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivf_perception.engine.postprocess import logits_to_labels, to_uint8_rgb


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
