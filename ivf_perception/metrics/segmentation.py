"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole set.

DESIGN.md §6: per-class IoU and mIoU come from one confusion matrix summed over every image of
the set (the benchmark convention), never from a mean of per-image IoUs; pixels labelled
``ignore_index`` (255) in the ground truth are left out; class 0 (unlabelled / background) is
reported on its own and excluded from the headline mIoU.

Labels may be numpy arrays or torch tensors of any (matching) shape, e.g. ``(H, W)`` or
``(B, H, W)``; torch tensors are counted on their own device and only the ``K×K`` matrix is
copied back. No printing or file writes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "confusion_matrix",
    "iou_from_confusion",
    "miou",
    "pixel_accuracy",
    "segmentation_scores",
    "ConfusionAccumulator",
]


def _shape_error(message: str) -> Exception:
    # Imported lazily: ivf_perception.checks imports torch.
    from ivf_perception.checks import ShapeError

    return ShapeError(message)


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _format_ids(values: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def _check_labels_dtype(x: Any, name: str) -> None:
    if _is_torch_tensor(x):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(
                f"{name}: expected integer class ids, got a {x.dtype} tensor; "
                "pass logits.argmax(dim=1) rather than logits or probabilities"
            )
        return
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise TypeError(
            f"{name}: expected integer class ids, got dtype {x.dtype}; "
            "pass logits.argmax(axis=1) rather than logits or probabilities"
        )


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Confusion matrix of one prediction against its ground truth.

    Args:
        pred: predicted class ids, any shape (numpy integer array or torch integer tensor).
        target: ground-truth class ids, same shape as ``pred``.
        num_classes: ``K``; valid ids are ``0..K-1``.
        ignore_index: ground-truth id whose pixels are skipped (None: skip nothing). A pixel
            whose ground truth is ignored is skipped whatever its prediction.

    Returns:
        int64 array ``(K, K)``: ``conf[t, p]`` counts pixels of true class ``t`` (rows) predicted
        as ``p`` (columns).

    Raises:
        ShapeError: shapes differ (with a hint when ``pred`` looks like logits).
        TypeError: non-integer labels.
        ValueError: ``num_classes`` < 1, or ids outside ``0..K-1`` (naming the offending ids;
            for the ground truth, ``ignore_index`` is allowed).
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    k = int(num_classes)
    _check_labels_dtype(pred, "pred")
    _check_labels_dtype(target, "target")
    if tuple(pred.shape) != tuple(target.shape):
        hint = ""
        if len(pred.shape) == len(target.shape) + 1:
            hint = "; pred has one more dimension than target: pass logits.argmax(1), not logits"
        raise _shape_error(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}{hint}"
        )
    if _is_torch_tensor(pred) or _is_torch_tensor(target):
        return _confusion_torch(pred, target, k, ignore_index)

    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    t = np.asarray(target).astype(np.int64, copy=False).ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    _check_range(t, k, "target", ignore_index)
    _check_range(p, k, "pred", None)
    counts = np.bincount(t * k + p, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64, copy=False)


def _check_range(ids: np.ndarray, k: int, name: str, ignore_index: int | None) -> None:
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= k)
    if bad.any():
        offending = np.unique(ids[bad]).tolist()
        allowed = f"0..{k - 1}" + (f" (and {ignore_index} = ignore)" if ignore_index is not None else "")
        raise ValueError(
            f"{name} contains class ids outside {allowed}: {_format_ids(offending)}; "
            "check num_classes and the label encoding (colour-coded PNGs need mapping to ids)"
        )


def _confusion_torch(pred: Any, target: Any, k: int, ignore_index: int | None) -> np.ndarray:
    import torch

    p = torch.as_tensor(pred).reshape(-1).to(torch.int64)
    t = torch.as_tensor(target).reshape(-1).to(torch.int64)
    if p.device != t.device:
        t = t.to(p.device)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    for ids, name, ign in ((t, "target", ignore_index), (p, "pred", None)):
        bad = (ids < 0) | (ids >= k)
        if bool(bad.any()):
            _check_range(ids[bad].cpu().numpy(), k, name, ign)
    counts = torch.bincount(t * k + p, minlength=k * k)
    return counts.reshape(k, k).cpu().numpy().astype(np.int64, copy=False)


def _check_conf(conf: Any) -> np.ndarray:
    c = np.asarray(conf)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise _shape_error(f"confusion matrix must be square (K, K), got shape {c.shape}")
    return c.astype(np.float64)


def iou_from_confusion(conf: Any) -> np.ndarray:
    """Per-class intersection over union from a confusion matrix (rows = ground truth).

    ``IoU_k = conf[k, k] / (Σ_j conf[k, j] + Σ_i conf[i, k] - conf[k, k])``.

    Args:
        conf: ``(K, K)`` counts.

    Returns:
        float64 ``(K,)`` in ``[0, 1]``; NaN for a class that appears neither in the ground truth
        nor in the predictions (its IoU is undefined and it must not count in a mean).
    """
    c = _check_conf(conf)
    tp = np.diag(c)
    union = c.sum(axis=1) + c.sum(axis=0) - tp
    iou = np.full(c.shape[0], np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    return iou


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def miou(conf: Any, include_background: bool = False) -> float:
    """Mean IoU over the classes present (ground truth or prediction) in ``conf``.

    Args:
        conf: ``(K, K)`` confusion matrix accumulated over the whole set.
        include_background: if False (default, the benchmark headline) class 0 is left out and
            the mean runs over classes ``1..K-1``; if True over ``0..K-1``.

    Returns:
        mIoU in ``[0, 1]``; NaN when no class in the range is present (nothing was counted).
    """
    iou = iou_from_confusion(conf)
    return _nanmean(iou if include_background else iou[1:])


def pixel_accuracy(conf: Any) -> float:
    """Fraction of counted (non-ignored) pixels predicted correctly; NaN when nothing counted."""
    c = _check_conf(conf)
    total = c.sum()
    return float(np.trace(c) / total) if total > 0 else math.nan


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def segmentation_scores(conf: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The segmentation report of a set, from its accumulated confusion matrix.

    Args:
        conf: ``(K, K)`` confusion matrix (rows = ground truth).
        class_names: ``K`` unique names; default ``"0" .. "K-1"``.

    Returns:
        ``{"per_class_iou": {name: IoU}, "mIoU", "mIoU_with_background", "background_IoU",
        "pixel_accuracy"}``: every class's IoU; the mean over classes 1..K-1 present (the
        headline, DESIGN §6); the mean over all present classes; class 0's IoU; the fraction of
        counted pixels predicted correctly. Undefined values (a class absent from ground truth and
        predictions, or nothing counted at all) are ``None`` rather than NaN, so the dict
        serialises as strict JSON.

    Raises:
        ShapeError: ``conf`` is not square.
        ValueError: ``class_names`` has the wrong length or repeats a name.
    """
    c = _check_conf(conf)
    k = c.shape[0]
    if class_names is None:
        names = [str(i) for i in range(k)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != k:
            raise ValueError(f"class_names has {len(names)} names but the confusion matrix has {k} classes")
        if len(set(names)) != k:
            raise ValueError(f"class_names must be unique, got {names}")
    iou = iou_from_confusion(c)
    return {
        "per_class_iou": {name: _or_none(v) for name, v in zip(names, iou)},
        "mIoU": _or_none(_nanmean(iou[1:])),
        "mIoU_with_background": _or_none(_nanmean(iou)),
        "background_IoU": _or_none(iou[0]),
        "pixel_accuracy": _or_none(pixel_accuracy(c)),
    }


class ConfusionAccumulator:
    """Sums confusion matrices over a set (DESIGN §6: IoU over the whole set, not per image).

    :meth:`compute` returns the accumulated matrix, :meth:`scores` the
    :func:`segmentation_scores` report of it.

    Args:
        num_classes: ``K``.
        ignore_index: ground-truth id to skip (default 255; None skips nothing).
        class_names: optional ``K`` names used as keys of the ``IoU`` dict.

    Example:
        >>> acc = ConfusionAccumulator(3)
        >>> acc.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 255]]))
        >>> acc.compute().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        >>> acc.scores()["mIoU"]
        1.0
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 class_names: Sequence[str] | None = None) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_updates = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add one batch (any shape; ``pred`` and ``target`` with the same shape)."""
        self._conf += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.num_updates += 1

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the accumulated ``(K, K)`` int64 matrix (rows = ground truth)."""
        return self._conf.copy()

    def compute(self) -> np.ndarray:
        """The ``(K, K)`` int64 confusion matrix of everything added since :meth:`reset` (a copy)."""
        return self._conf.copy()

    def scores(self) -> dict[str, Any]:
        """:func:`segmentation_scores` of the accumulated matrix, keyed by ``class_names``."""
        return segmentation_scores(self._conf, self.class_names)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._conf[...] = 0
        self.num_updates = 0
