"""Panoptic quality (Kirillov et al., 2019): PQ, SQ and RQ overall, over things and over stuff, and per class, as
COCO's panopticapi computes them.

A panoptic map is an ``(H, W)`` array of segment ids with a mapping from each id to its class index; id
:data:`VOID` (0) is an unlabelled pixel in the ground truth and a pixel given to no segment in a prediction. A
predicted segment matches a ground-truth segment of its class when their IoU, leaving out the predicted pixels that
fall on void, exceeds 0.5 (no two can then match the same segment). An unmatched prediction lying more than half on
void, or on a crowd region of its class, is not counted as a false positive: it has nothing labelled to be wrong
about.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from lemevit.labels import VOID

__all__ = ["VOID", "PanopticStats", "panoptic_metrics"]

#: The IoU above which a predicted segment matches a ground-truth one.
MATCH_IOU = 0.5


def _segment_areas(ids: np.ndarray, segments: Mapping[int, int], what: str) -> dict[int, int]:
    found, counts = np.unique(ids, return_counts=True)
    unknown = [int(i) for i in found if i != VOID and int(i) not in segments]
    if unknown:
        raise ValueError(f"{what} map has segment id(s) {unknown[:10]} that are not among its segments")
    return {int(i): int(n) for i, n in zip(found, counts, strict=True) if i != VOID}


class PanopticStats:
    """Per-class sums over the images seen: true positives, false positives, false negatives and the IoU of the
    matches."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp = np.zeros(num_classes, dtype=np.int64)
        self.fn = np.zeros(num_classes, dtype=np.int64)
        self.iou = np.zeros(num_classes, dtype=np.float64)

    def update(self, pred_ids, pred_segments: Mapping[int, int], true_ids, true_segments: Mapping[int, int],
               crowd: Collection[int] = ()) -> None:
        """Add one image.

        ``pred_ids`` and ``true_ids`` are ``(H, W)`` segment id maps (numpy arrays or CPU tensors);
        ``pred_segments`` and ``true_segments`` map each id to its class index; ``crowd`` are ground-truth ids of
        crowd regions (a group of objects labelled as one: neither matched nor missed).
        """
        pred_ids, true_ids = np.asarray(pred_ids).astype(np.int64), np.asarray(true_ids).astype(np.int64)
        if pred_ids.shape != true_ids.shape:
            raise ValueError(f"prediction {pred_ids.shape} and ground truth {true_ids.shape} differ in size")
        pred_area = _segment_areas(pred_ids, pred_segments, "predicted")
        true_area = _segment_areas(true_ids, true_segments, "ground-truth")
        # Every (true, predicted) pair of ids that overlaps, with its pixel count, from one pass over the maps.
        pairs, counts = np.unique(np.stack([true_ids.ravel(), pred_ids.ravel()]), axis=1, return_counts=True)
        overlap = {(int(t), int(p)): int(n) for (t, p), n in zip(pairs.T, counts, strict=True)}
        crowd = {int(c) for c in crowd}
        matched_true, matched_pred = set(), set()
        for (t, p), inter in overlap.items():
            if t == VOID or p == VOID or t in crowd or true_segments[t] != pred_segments[p]:
                continue
            union = pred_area[p] + true_area[t] - inter - overlap.get((VOID, p), 0)
            iou = inter / union
            if iou > MATCH_IOU:
                c = true_segments[t]
                self.tp[c] += 1
                self.iou[c] += iou
                matched_true.add(t)
                matched_pred.add(p)
        for t in true_area.keys() - matched_true - crowd:
            self.fn[true_segments[t]] += 1
        crowd_of_class: dict[int, list[int]] = {}
        for t in crowd & true_area.keys():
            crowd_of_class.setdefault(true_segments[t], []).append(t)
        for p in pred_area.keys() - matched_pred:
            c = pred_segments[p]
            unlabelled = overlap.get((VOID, p), 0) + sum(overlap.get((t, p), 0) for t in crowd_of_class.get(c, ()))
            if unlabelled / pred_area[p] <= MATCH_IOU:
                self.fp[c] += 1

    def __iadd__(self, other: PanopticStats) -> PanopticStats:
        for name in ("tp", "fp", "fn", "iou"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self


def _qualities(tp: int, fp: int, fn: int, iou: float) -> dict:
    """PQ = SQ x RQ of one class, or None for all three when it is neither in the ground truth nor predicted."""
    if tp + fp + fn == 0:
        return {"pq": None, "sq": None, "rq": None}
    sq = iou / tp if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": sq * rq, "sq": sq, "rq": rq}


def panoptic_metrics(stats: PanopticStats, class_names: Sequence[str], thing_classes: Collection[str]) -> dict:
    """PQ, SQ and RQ averaged over the classes that occur (in the ground truth or predicted), over the thing classes
    and over the stuff classes (None for a group without such a class), and per class with its TP, FP and FN."""
    unknown = sorted(set(thing_classes) - set(class_names))
    if unknown:
        raise ValueError(f"thing classes {unknown} are not among the classes {list(class_names)}")
    if len(class_names) != stats.num_classes:
        raise ValueError(f"{len(class_names)} class names for statistics of {stats.num_classes} classes")
    per_class = {}
    for c, name in enumerate(class_names):
        tp, fp, fn = int(stats.tp[c]), int(stats.fp[c]), int(stats.fn[c])
        per_class[name] = _qualities(tp, fp, fn, float(stats.iou[c])) | {
            "tp": tp, "fp": fp, "fn": fn, "isthing": name in thing_classes}

    def average(names: list[str]) -> dict:
        counted = [per_class[n] for n in names if per_class[n]["pq"] is not None]
        if not counted:
            return {"pq": None, "sq": None, "rq": None, "num_classes": 0}
        return {k: float(np.mean([q[k] for q in counted])) for k in ("pq", "sq", "rq")} | {
            "num_classes": len(counted)}

    overall = average(list(class_names))
    return overall | {
        "things": average([n for n in class_names if n in thing_classes]),
        "stuff": average([n for n in class_names if n not in thing_classes]),
        "per_class": per_class,
        "class_names": list(class_names),
        "thing_classes": [n for n in class_names if n in thing_classes],
    }
