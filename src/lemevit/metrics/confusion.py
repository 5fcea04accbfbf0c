"""Pixel-level scores from a confusion matrix: segmentation's OA, IoU and F1 per class, and change detection's
precision, recall, F1 and IoU of the change class, and its F1 at every decision threshold from binned change
probabilities."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lemevit.labels import IGNORE_INDEX

__all__ = ["CHANGE_BINS", "CHANGE_CLASS_NAMES", "best_change_threshold", "change_histogram", "change_metrics",
           "confusion_matrix", "segmentation_metrics"]

#: The two classes of a change map: class 1 is change.
CHANGE_CLASS_NAMES = ("no change", "change")
#: Change probabilities are counted in this many equal bins: the F1 of every threshold k / CHANGE_BINS then
#: follows from the counts alone (:func:`best_change_threshold`), summed over pairs of any size.
CHANGE_BINS = 100


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 pixel counts, rows the true class and columns the predicted one; pixels whose target
    is ``IGNORE_INDEX`` are left out."""
    keep = target != IGNORE_INDEX
    pairs = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """OA, mIoU, mF1, per-class IoU/F1/precision/recall/support and the confusion matrix.

    A class that is neither in the ground truth nor predicted has no IoU or F1 (null): the means are over the
    classes that have them, as mmsegmentation's ``nanmean``.
    """
    confusion = confusion.double()
    tp = confusion.diag()
    true_total, pred_total = confusion.sum(dim=1), confusion.sum(dim=0)
    union = true_total + pred_total - tp

    def ratio(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
        return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]

    iou, f1 = ratio(tp, union), ratio(2 * tp, true_total + pred_total)
    precision, recall = ratio(tp, pred_total), ratio(tp, true_total)
    total = float(confusion.sum())

    def mean(values: list[float | None]) -> float:
        defined = [v for v in values if v is not None]
        return sum(defined) / len(defined) if defined else math.nan

    return {
        "oa": float(tp.sum() / total) if total else math.nan,
        "miou": mean(iou),
        "mf1": mean(f1),
        "num_pixels": int(total),
        "per_class": {name: {"iou": iou[i], "f1": f1[i], "precision": precision[i], "recall": recall[i],
                             "support": int(true_total[i])} for i, name in enumerate(class_names)},
        "class_names": list(class_names),
        "confusion_matrix": confusion.long().tolist(),
    }


def change_metrics(confusion: torch.Tensor) -> dict:
    """Precision, recall, F1 and IoU of the change class and the overall accuracy, from the ``(2, 2)``
    pixel confusion matrix (rows: true, columns: predicted; class 1 = change).

    A value whose denominator is zero (no change in the ground truth nor in the prediction, say) is None.
    """
    metrics = segmentation_metrics(confusion, CHANGE_CLASS_NAMES)
    change = metrics["per_class"]["change"]
    return {key: change[key] for key in ("precision", "recall", "f1", "iou")} | {
        "oa": metrics["oa"],
        "num_pixels": metrics["num_pixels"],
        "changed_pixels": change["support"],
        "no_change": metrics["per_class"]["no change"],
        "confusion_matrix": metrics["confusion_matrix"],
        "class_names": list(CHANGE_CLASS_NAMES),
    }


def change_histogram(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(2, CHANGE_BINS)`` int64 pixel counts of the change ``probability`` ``(H, W)`` in :data:`CHANGE_BINS` equal
    bins, the row the true class of ``target`` ``(H, W)`` (0 no change, 1 change); ``IGNORE_INDEX`` left out."""
    keep = target != IGNORE_INDEX
    bins = (probability[keep].float() * CHANGE_BINS).long().clamp_(0, CHANGE_BINS - 1)
    return torch.bincount(target[keep].long() * CHANGE_BINS + bins, minlength=2 * CHANGE_BINS).reshape(2, CHANGE_BINS)


def best_change_threshold(histogram: torch.Tensor) -> tuple[float | None, float | None]:
    """The decision threshold ``k / CHANGE_BINS`` (change from it up; k = 1 .. CHANGE_BINS - 1) with the highest
    change-class F1 over the counts of :func:`change_histogram`, and that F1; ``(None, None)`` when the truth has
    no change."""
    positives = float(histogram[1].sum())
    if not positives:
        return None, None
    at_or_above = histogram.flip(-1).cumsum(-1).flip(-1)[:, 1:].double()
    true_positives, false_positives = at_or_above[1], at_or_above[0]
    # 2 TP / (2 TP + FP + FN), with FN = positives - TP.
    f1 = 2 * true_positives / (true_positives + false_positives + positives)
    k = int(f1.argmax())
    return (k + 1) / CHANGE_BINS, float(f1[k])
