"""DOTA's Task-1 evaluation of oriented detections: VOC average precision per class and its mean."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lemevit.ops.rotated import convex_quad_iou

__all__ = ["average_precision", "detection_map"]


def average_precision(recall: np.ndarray, precision: np.ndarray, eleven_point: bool = True) -> float:
    """VOC average precision: the mean of the best precision at recall >= 0, 0.1, ..., 1 (VOC2007's 11 points,
    which DOTA's devkit and mmrotate use for DOTA), or the area under the interpolated curve."""
    if eleven_point:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def detection_map(detections: Sequence[dict], ground_truths: Sequence[dict], class_names: Sequence[str],
                  iou_threshold: float = 0.5, eleven_point: bool = True) -> dict:
    """DOTA Task-1 evaluation.

    ``detections[i]``: ``quads`` ``(n, 4, 2)``, ``scores``, ``labels`` of image ``i``; ``ground_truths[i]``:
    ``quads``, ``labels``, ``difficult``. Per class, detections of all images are ranked by score; one is a
    true positive when its polygon IoU with an unmatched object of its class in its image is the highest and
    above ``iou_threshold``; a match with a difficult object counts neither way; difficult objects are not
    counted in the recall. ``map50`` averages the classes that have objects.
    """
    per_class = {}
    for c, name in enumerate(class_names):
        scores, hits, used, num_gt, num_det = [], [], [], 0, 0
        for det, gt in zip(detections, ground_truths, strict=True):
            det_mask, gt_mask = np.asarray(det["labels"]) == c, np.asarray(gt["labels"]) == c
            d_quads, d_scores = np.asarray(det["quads"])[det_mask], np.asarray(det["scores"])[det_mask]
            g_quads, difficult = np.asarray(gt["quads"])[gt_mask], np.asarray(gt["difficult"])[gt_mask].astype(bool)
            num_gt += int((~difficult).sum())
            num_det += len(d_scores)
            if len(d_scores) == 0:
                continue
            order = np.argsort(-d_scores, kind="stable")
            d_quads, d_scores = d_quads[order], d_scores[order]
            hit = np.zeros(len(d_scores), bool)
            counted = np.ones(len(d_scores), bool)
            if len(g_quads):
                iou = convex_quad_iou(torch.as_tensor(d_quads, dtype=torch.float64),
                                      torch.as_tensor(g_quads, dtype=torch.float64)).numpy()
                best, match = iou.max(1), iou.argmax(1)
                taken = np.zeros(len(g_quads), bool)
                # Within one image, higher-scored detections claim their object first (sequential by nature).
                for k in np.nonzero(best > iou_threshold)[0]:
                    if difficult[match[k]]:
                        counted[k] = False
                    elif not taken[match[k]]:
                        hit[k] = taken[match[k]] = True
            scores.append(d_scores[counted])
            hits.append(hit[counted])
            used.append(counted.sum())
        if num_gt == 0:
            per_class[name] = {"ap": None, "num_gt": 0, "num_det": num_det}
            continue
        scores = np.concatenate(scores) if scores else np.zeros(0)
        hits = np.concatenate(hits) if hits else np.zeros(0, bool)
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = average_precision(recall, precision, eleven_point) if len(scores) else 0.0
        per_class[name] = {"ap": ap, "num_gt": num_gt, "num_det": num_det,
                           "recall": float(recall[-1]) if len(recall) else 0.0}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"map50": float(np.mean(aps)) if aps else 0.0, "iou_threshold": iou_threshold,
            "ap_method": "voc07_11point" if eleven_point else "area", "per_class": per_class}
