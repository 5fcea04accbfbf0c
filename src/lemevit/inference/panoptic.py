"""Panoptic segmentation of images of any size, window by window.

Windows are placed as the blended sliding window places them (:func:`~lemevit.inference.sliding_window.window_starts`)
and run through Panoptic FPN. The semantic branch's probabilities are blended across windows like a segmentation
model's. The objects are merged: an object cut by a window's border is found, in part, by each window it
straddles, and an object in the band two windows share is found by both; :func:`merge_window_instances` makes one
instance of the pieces whose masks agree on the pixels both windows see. The merged instances and the blended
semantic map are then fused into one panoptic map by Panoptic FPN's heuristic.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lemevit.inference.sliding_window import blended_strips, window_starts
from lemevit.models.panoptic_fpn import PanopticFPN, panoptic_fusion

__all__ = ["Instance", "Fusion", "merge_window_instances", "predict_panoptic", "window_instances"]


@dataclass
class Instance:
    """An object of a scene: its score, class index and boolean mask ``(h, w)``, cropped to its extent and placed
    with its top-left pixel at ``(top, left)`` of the scene."""

    score: float
    label: int
    top: int
    left: int
    mask: torch.Tensor

    @property
    def bottom(self) -> int:
        return self.top + self.mask.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.mask.shape[1]

    def within(self, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        """The mask over the box ``top..bottom`` x ``left..right`` of the scene (False outside the instance)."""
        out = torch.zeros(bottom - top, right - left, dtype=torch.bool)
        t, b, lo, r = max(top, self.top), min(bottom, self.bottom), max(left, self.left), min(right, self.right)
        if t < b and lo < r:
            part = self.mask[t - self.top:b - self.top, lo - self.left:r - self.left]
            out[t - top:b - top, lo - left:r - left] = part
        return out


@dataclass(frozen=True)
class Fusion:
    """The settings of inference: masks are probabilities above ``mask_threshold``; instances scored under
    ``score_threshold`` are dropped, as are those more than ``overlap_threshold`` of which better ones took, and
    stuff regions of fewer than ``stuff_area`` pixels; pieces of windows whose masks' IoU on the pixels both
    windows see exceeds ``merge_iou`` are one object."""

    mask_threshold: float = 0.5
    score_threshold: float = 0.5
    overlap_threshold: float = 0.5
    stuff_area: int = 4096
    merge_iou: float = 0.5


def window_instances(instances: dict, top: int, left: int, height: int, width: int, mask_threshold: float = 0.5,
                     score_threshold: float = 0.0) -> list[Instance]:
    """The instances of one window's output (``scores``, ``classes``, ``masks`` as probabilities over the window)
    for the window at ``(top, left)`` of a ``height`` x ``width`` scene: masks thresholded, clipped to the scene
    (a scene smaller than the window was padded) and cropped to their extent. Instances scored under
    ``score_threshold`` or with an empty mask are left out."""
    out = []
    for score, label, probs in zip(instances["scores"].tolist(), instances["classes"].tolist(),
                                   instances["masks"], strict=True):
        if score < score_threshold:
            continue
        mask = probs[:height - top, :width - left] > mask_threshold
        rows, cols = torch.nonzero(mask.any(1)), torch.nonzero(mask.any(0))
        if len(rows) == 0:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        out.append(Instance(score, int(label), top + r0, left + c0, mask[r0:r1, c0:c1].cpu().clone()))
    return out


def merge_window_instances(corners: Sequence[tuple[int, int]], instances: Sequence[Sequence[Instance]],
                           window: int, iou: float = 0.5) -> list[Instance]:
    """One instance per object from those of overlapping windows.

    ``instances[k]`` were found by the window of side ``window`` whose top-left pixel is ``corners[k]``
    (``(top, left)``). Two instances of one class found by different windows are the same object when, on the
    pixels both windows see, the IoU of their masks exceeds ``iou``: where two windows overlap, both see the same
    part of an object, whether it lies wholly in the shared band or is cut by one window's border. Instances of the
    same window are never merged (the detector's NMS has already told them apart). Merged instances (transitively:
    an object over four windows) take the union of the masks and the highest score.
    """
    flat = [(k, inst) for k, found in enumerate(instances) for inst in found]
    first = [0]
    for found in instances:
        first.append(first[-1] + len(found))
    parent = list(range(len(flat)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, (ya, xa) in enumerate(corners):
        for b in range(a + 1, len(corners)):
            yb, xb = corners[b]
            top, bottom, left, right = max(ya, yb), min(ya, yb) + window, max(xa, xb), min(xa, xb) + window
            if top >= bottom or left >= right:
                continue
            for i in range(first[a], first[a + 1]):
                p = flat[i][1]
                for j in range(first[b], first[b + 1]):
                    q = flat[j][1]
                    if p.label != q.label or root(i) == root(j):
                        continue
                    # Only the part of the shared band that either mask reaches.
                    t, btm = max(top, min(p.top, q.top)), min(bottom, max(p.bottom, q.bottom))
                    lo, r = max(left, min(p.left, q.left)), min(right, max(p.right, q.right))
                    if t >= btm or lo >= r:
                        continue
                    mp, mq = p.within(t, btm, lo, r), q.within(t, btm, lo, r)
                    union = int((mp | mq).sum())
                    if union and int((mp & mq).sum()) / union > iou:
                        parent[root(j)] = root(i)
    groups: dict[int, list[Instance]] = {}
    for i, (_, inst) in enumerate(flat):
        groups.setdefault(root(i), []).append(inst)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(members[0])
            continue
        top, left = min(m.top for m in members), min(m.left for m in members)
        bottom, right = max(m.bottom for m in members), max(m.right for m in members)
        mask = torch.zeros(bottom - top, right - left, dtype=torch.bool)
        for m in members:
            mask[m.top - top:m.bottom - top, m.left - left:m.right - left] |= m.mask
        merged.append(Instance(max(m.score for m in members), members[0].label, top, left, mask))
    return merged


@torch.inference_mode()
def predict_panoptic(model: PanopticFPN, image: torch.Tensor, window: int, stride: int, fusion: Fusion = Fusion(),
                     batch_size: int = 8) -> tuple[torch.Tensor, list[dict]]:
    """The panoptic map of one normalised image ``(C, H, W)``: ``(H, W)`` int64 segment ids (0: no segment) and
    each segment's ``id``, ``class`` (index), ``isthing`` and ``score`` (None for stuff), as
    :func:`~lemevit.models.panoptic_fpn.panoptic_fusion` gives them. ``model`` is run in eval mode on its device, on
    ``batch_size`` windows at a time."""
    height, width = image.shape[-2:]
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    # blended_strips runs every window once (no nodata mask is given), row by row and left to right: the windows
    # of each batch it hands over are the next ones of this list.
    corners = [(y, x) for y in ys for x in xs]
    found: list[list[Instance]] = []
    device = next(model.parameters()).device

    def predict(batch: torch.Tensor) -> torch.Tensor:
        outputs = model(batch.to(device))
        for output in outputs:
            top, left = corners[len(found)]
            found.append(window_instances(output["instances"], top, left, height, width, fusion.mask_threshold,
                                          fusion.score_threshold))
        return torch.stack([o["semantic"] for o in outputs]).softmax(dim=1).cpu()

    semantic = torch.empty(height, width, dtype=torch.int64)
    for top, probs in blended_strips(lambda a, b: image[:, a:b], height, width, predict, window, stride,
                                     batch_size):
        semantic[top:top + probs.shape[1]] = probs.argmax(dim=0)
    if len(found) != len(corners):
        raise RuntimeError(f"{len(found)} windows were run, {len(corners)} placed")
    instances = merge_window_instances(corners, found, window, fusion.merge_iou)
    return panoptic_fusion(torch.tensor([i.score for i in instances]),
                           torch.tensor([i.label for i in instances], dtype=torch.int64),
                           [i.mask for i in instances], semantic, model.stuff_classes,
                           overlap_threshold=fusion.overlap_threshold, score_threshold=fusion.score_threshold,
                           stuff_area=fusion.stuff_area, corners=[(i.top, i.left) for i in instances])
