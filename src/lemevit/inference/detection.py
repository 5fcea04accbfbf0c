"""Oriented detection over images of any size: windows placed by the sliding-window engine's geometry (the last row
and column flush with the border), detected a batch at a time as the scene is read, and their boxes merged into one
set by class-wise rotated NMS. Training cuts its windows by the same geometry."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lemevit.errors import ConfigError
from lemevit.inference.sliding_window import window_starts
from lemevit.io.raster import SceneStack
from lemevit.ops.rotated import box_to_hbox, box_to_quad, rotated_batched_nms
from lemevit.timing import StageTimer

__all__ = ["default_overlap", "detect_scene", "detection_windows", "merge_window_detections"]

#: Overlap of 1024-pixel windows in the published DOTA setting; other window sides overlap in proportion.
_OVERLAP_OF_1024 = 200


def default_overlap(window: int) -> int:
    """The overlap of windows of side ``window`` when none is given: 200 px for 1024 px windows (the published
    DOTA setting), in proportion for other sides (100 for 512)."""
    return window * _OVERLAP_OF_1024 // 1024


def detection_windows(width: int, height: int, size: int = 1024, overlap: int = 200) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of ``size`` windows stepping ``size - overlap``, row by row: the sliding-window
    engine's :func:`~lemevit.inference.sliding_window.window_starts` along each axis, so every pixel is covered and
    no window sticks out (unless the image is smaller than ``size``, which gives one window at 0 to be padded)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError("img_size", f"the window side must be a positive integer, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ConfigError("overlap", f"must be an integer from 0 to less than the window side ({size}), "
                                     f"got {overlap!r}")
    xs, ys = window_starts(width, size, size - overlap), window_starts(height, size, size - overlap)
    return [(x, y) for y in ys for x in xs]


def detect_scene(detector: Callable[[torch.Tensor], list[dict]], scene: SceneStack, size: int, overlap: int,
                 batch_size: int, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 iou_threshold: float, timer: StageTimer, max_windows: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oriented boxes as corner quads ``(n, 4, 2)``, scores and labels over a whole scene: ``detector`` (normalised
    ``(B, C, size, size)`` windows -> per window a dict of ``boxes`` in window pixels, ``scores``, ``labels``) runs
    window by window, and the windows' boxes are merged by :func:`merge_window_detections` at ``iou_threshold``.

    Windows are read from the scene one batch at a time, so that a scene GDAL reads in parts (a GeoTIFF, a VRT, a
    URL) is never held whole; windows without a pixel with data (the scene's nodata value, alpha band or mask) are
    not run, and the pixels without data in the others are fed as the band means; ``max_windows`` runs only the
    first ones (a check that the path works). Padding past the border is normalised too, as in training. ``timer``
    gets the seconds of reading and merging."""
    windows = detection_windows(scene.width, scene.height, size, overlap)
    if scene.masked:
        windows = [(x0, y0) for x0, y0 in windows
                   if scene.read_valid(y0, min(y0 + size, scene.height), x0, min(x0 + size, scene.width)).any()]
    windows = windows[:max_windows]
    if not windows:
        return np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    mean_pixel = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_pixel = torch.tensor(std, dtype=torch.float32)[:, None, None]
    boxes, scores, labels = [], [], []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        with timer.stage("read"):
            batch = torch.zeros(len(chunk), scene.bands, size, size)
            valid = torch.ones(len(chunk), size, size, dtype=torch.bool) if scene.masked else None
            for k, (x0, y0) in enumerate(chunk):
                y1, x1 = min(y0 + size, scene.height), min(x0 + size, scene.width)
                batch[k, :, :y1 - y0, :x1 - x0] = torch.from_numpy(scene.read(y0, y1, x0, x1))
                if valid is not None:
                    valid[k, :y1 - y0, :x1 - x0] = torch.from_numpy(scene.read_valid(y0, y1, x0, x1))
            batch = batch.sub_(mean_pixel).div_(std_pixel)
            if valid is not None:  # no data (a nodata value, NaN) fed as the band means, as padding is
                batch.masked_fill_(~valid[:, None], 0)
        for found in detector(batch.to(device)):
            boxes.append(found["boxes"].float().cpu())
            scores.append(found["scores"].float().cpu())
            labels.append(found["labels"].cpu())
    with timer.stage("merge"):
        boxes, scores, labels = merge_window_detections(boxes, scores, labels, windows, iou_threshold)
    return box_to_quad(boxes).numpy(), scores.numpy(), labels.numpy()


def merge_window_detections(boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                            labels: Sequence[torch.Tensor], windows: Sequence[tuple[int, int]],
                            iou_threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of the windows of one image moved to full-image coordinates, duplicates from overlapping
    windows removed by class-wise rotated NMS, by decreasing score.

    Each window's detections already went through the same NMS, so a box can only be suppressed by, or suppress, a
    box of another window that it overlaps: the boxes that overlap the region of no other window's boxes are kept
    as they are, and only the others (those near the windows' overlaps) go through the NMS again. The result is
    that of one NMS over all the boxes, at a fraction of its cost on a scene of many windows."""
    shifted = []
    for b, (x0, y0) in zip(boxes, windows, strict=True):
        b = b.clone()
        b[:, 0] += x0
        b[:, 1] += y0
        shifted.append(b)
    all_boxes, all_scores, all_labels = torch.cat(shifted), torch.cat(list(scores)), torch.cat(list(labels))
    window_of = torch.cat([torch.full((len(b),), k) for k, b in enumerate(boxes)])
    bounds = box_to_hbox(all_boxes)
    shared = torch.zeros(len(all_boxes), dtype=torch.bool)
    for k in window_of.unique().tolist():
        own = window_of == k
        low, high = bounds[own, :2].amin(0), bounds[own, 2:].amax(0)
        # Boxes that touch count as overlapping: the NMS's own test is stricter, so none is missed.
        touches = (bounds[:, :2] <= high).all(-1) & (bounds[:, 2:] >= low).all(-1)
        shared |= touches & ~own
    alone, near = (~shared).nonzero()[:, 0], shared.nonzero()[:, 0]
    keep = torch.cat([alone, near[rotated_batched_nms(all_boxes[near], all_scores[near], all_labels[near],
                                                      iou_threshold)]])
    keep = keep[all_scores[keep].argsort(descending=True)]
    return all_boxes[keep], all_scores[keep], all_labels[keep]
