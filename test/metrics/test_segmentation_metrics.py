"""Segmentation metrics: confusion matrix by hand, ignore label, whole-set IoU, accumulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ivf_perception.checks import ShapeError
from ivf_perception.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    iou_from_confusion,
    miou,
    pixel_accuracy,
    segmentation_scores,
)


class TestConfusionMatrix:
    def test_hand(self):
        target = np.array([[0, 0, 1], [1, 2, 2]])
        pred = np.array([[0, 1, 1], [2, 2, 0]])
        expected = np.array([
            [1, 1, 0],  # true 0: one right, one predicted as 1
            [0, 1, 1],  # true 1
            [1, 0, 1],  # true 2
        ])
        conf = confusion_matrix(pred, target, 3)
        assert conf.dtype == np.int64 and conf.shape == (3, 3)
        np.testing.assert_array_equal(conf, expected)

    def test_ignore_index(self):
        target = np.array([255, 1, 255, 0], np.uint8)
        pred = np.array([1, 1, 0, 0], np.uint8)
        np.testing.assert_array_equal(confusion_matrix(pred, target, 2), [[1, 0], [0, 1]])
        with pytest.raises(ValueError, match="255"):
            confusion_matrix(pred, target, 2, ignore_index=None)

    def test_torch_any_batch_shape_matches_numpy(self):
        rng = np.random.default_rng(0)
        target = rng.integers(0, 4, (2, 3, 5))
        target[0, 0, :2] = 255
        pred = rng.integers(0, 4, (2, 3, 5))
        expected = confusion_matrix(pred, target, 4)
        got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8), 4)
        assert isinstance(got, np.ndarray) and got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
        assert expected.sum() == pred.size - 2

    def test_noncontiguous(self):
        target = np.arange(24).reshape(4, 6) % 3
        pred = (np.arange(24).reshape(4, 6) // 2) % 3
        np.testing.assert_array_equal(
            confusion_matrix(pred[:, ::2], target[:, ::2], 3),
            confusion_matrix(pred[:, ::2].copy(), target[:, ::2].copy(), 3),
        )

    def test_exception_out_of_range_names_ids(self):
        target = np.array([0, 7, 9, 9, 1])
        pred = np.array([0, 1, 1, 1, 1])
        with pytest.raises(ValueError, match=r"target contains class ids outside 0\.\.4 .*: 7, 9"):
            confusion_matrix(pred, target, 5)
        with pytest.raises(ValueError, match=r"pred contains class ids outside 0\.\.1: -1, 5"):
            confusion_matrix(np.array([-1, 5, 0]), np.array([0, 1, 0]), 2)
        with pytest.raises(ValueError, match=r"target contains class ids outside 0\.\.2 .*: 3"):
            confusion_matrix(torch.tensor([0, 1]), torch.tensor([3, 1]), 3)

    def test_exception_shapes_and_types(self):
        with pytest.raises(ShapeError, match=r"pred \(2, 3, 4, 4\) and target \(2, 4, 4\).*argmax"):
            confusion_matrix(np.zeros((2, 3, 4, 4), np.int64), np.zeros((2, 4, 4), np.int64), 3)
        with pytest.raises(TypeError, match="integer class ids"):
            confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), np.int64), 3)
        with pytest.raises(ValueError, match="num_classes"):
            confusion_matrix(np.zeros(2, np.int64), np.zeros(2, np.int64), 0)


class TestIoU:
    def test_hand_and_absent_class(self):
        conf = np.array([
            [5, 1, 0, 0],
            [2, 3, 0, 0],
            [0, 0, 0, 0],  # class 2: absent from ground truth and predictions
            [0, 0, 0, 4],
        ])
        iou = iou_from_confusion(conf)
        np.testing.assert_allclose(iou[[0, 1, 3]], [5 / 8, 3 / 6, 1.0])
        assert math.isnan(iou[2])
        assert miou(conf) == pytest.approx((0.5 + 1.0) / 2)  # classes 1..K-1 present
        assert miou(conf, include_background=True) == pytest.approx((5 / 8 + 0.5 + 1.0) / 3)
        assert pixel_accuracy(conf) == pytest.approx(12 / 15)

    def test_whole_set_differs_from_mean_of_images(self):
        # image 1: the one class-1 pixel is right (IoU 1); image 2: 1 of 4 found (IoU 1/4)
        t1, p1 = np.array([1, 0, 0, 0]), np.array([1, 0, 0, 0])
        t2, p2 = np.array([1, 1, 1, 1]), np.array([1, 0, 0, 0])
        per_image = [iou_from_confusion(confusion_matrix(p, t, 2))[1] for p, t in ((p1, t1), (p2, t2))]
        assert np.mean(per_image) == pytest.approx(0.625)
        acc = ConfusionAccumulator(2)
        acc.update(p1, t1)
        acc.update(p2, t2)
        assert acc.scores()["mIoU"] == pytest.approx(2 / 5)  # TP 2, union 5
        np.testing.assert_array_equal(acc.compute(), [[3, 0], [3, 2]])

    def test_nothing_counted(self):
        conf = np.zeros((3, 3), np.int64)
        assert math.isnan(miou(conf)) and math.isnan(pixel_accuracy(conf))

    def test_exception(self):
        with pytest.raises(ShapeError, match=r"square \(K, K\)"):
            iou_from_confusion(np.zeros((2, 3)))


class TestSegmentationScores:
    def test_report(self):
        conf = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
        s = segmentation_scores(conf, ["unlabelled", "car", "person"])
        assert set(s) == {"per_class_iou", "mIoU", "mIoU_with_background", "background_IoU", "pixel_accuracy"}
        assert list(s["per_class_iou"]) == ["unlabelled", "car", "person"]
        assert s["background_IoU"] == pytest.approx(8 / 11)
        assert s["mIoU"] == pytest.approx(3 / 6)
        assert s["mIoU_with_background"] == pytest.approx((8 / 11 + 3 / 6) / 2)
        assert s["pixel_accuracy"] == pytest.approx(11 / 14)
        assert s["per_class_iou"]["person"] is None  # absent: None, not NaN (strict JSON)
        json.dumps(s, allow_nan=False)

    def test_nothing_counted_is_none(self):
        s = segmentation_scores(np.zeros((2, 2), np.int64))
        assert s["mIoU"] is None and s["pixel_accuracy"] is None and s["per_class_iou"] == {"0": None, "1": None}

    def test_exception(self):
        with pytest.raises(ValueError, match="2 names but the confusion matrix has 3 classes"):
            segmentation_scores(np.zeros((3, 3)), ["a", "b"])
        with pytest.raises(ValueError, match="unique"):
            segmentation_scores(np.zeros((2, 2)), ["a", "a"])


class TestConfusionAccumulator:
    def test_update_compute_reset(self):
        acc = ConfusionAccumulator(3, class_names=["bg", "a", "b"])
        acc.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 255]]))
        acc.update(torch.tensor([[1, 1]]), torch.tensor([[1, 2]]))
        np.testing.assert_array_equal(acc.confusion, [[1, 0, 0], [0, 2, 0], [0, 1, 1]])
        np.testing.assert_array_equal(acc.compute(), acc.confusion)
        scores = acc.scores()
        assert scores["per_class_iou"]["a"] == pytest.approx(2 / 3)
        assert scores["per_class_iou"]["b"] == pytest.approx(1 / 2)
        assert acc.num_updates == 2
        acc.confusion[0, 0] = 99  # a copy: the accumulator is unaffected
        assert acc.confusion[0, 0] == 1
        acc.reset()
        assert acc.confusion.sum() == 0 and acc.num_updates == 0

    def test_exception(self):
        acc = ConfusionAccumulator(2)
        with pytest.raises(ValueError, match=": 2"):
            acc.update(np.array([0, 1]), np.array([2, 1]))
        assert acc.confusion.sum() == 0  # a failed update adds nothing
        with pytest.raises(ValueError, match="class_names has 1 names"):
            ConfusionAccumulator(2, class_names=["x"])
