"""Oriented-box geometry in plain, batched PyTorch: conversions, rotated IoU, rotated NMS, rotated RoI Align.

Angle convention ("le90", as in mmrotate's ``le90``): an oriented box is ``(cx, cy, w, h, theta)`` in pixel
coordinates (x to the right, y down), ``theta`` in radians in ``[-pi/2, pi/2)`` is the angle from the +x axis
to the box's ``w`` side, positive turning +x towards +y (clockwise on screen), and ``w >= h``.
:func:`normalize_boxes` brings any ``(cx, cy, w, h, theta)`` to this form.

Everything works on whole tensors of boxes; the only Python loops run over a handful of fixed-size items
(polygon corners, images of a batch, pyramid levels, NMS rounds), never over boxes or RoIs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "box_to_hbox", "box_to_quad", "convex_quad_iou", "normalize_boxes", "quad_to_box", "rotated_batched_nms",
    "rotated_box_iou", "rotated_multiclass_nms", "rotated_nms", "rotated_roi_align",
]

# Corner order of box_to_quad, in units of (w, h) in the box's own frame: clockwise on screen from the
# (-w/2, -h/2) corner.
_CORNER_SIGNS = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))
# Pairs pairwise IoU computes per chunk: bounds the (pairs, 24, 2) candidate-vertex tensors.
_PAIR_CHUNK = 1 << 18


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Angles brought into ``[-pi/2, pi/2)`` (a rectangle is the same after a half turn)."""
    return torch.remainder(theta + math.pi / 2, math.pi) - math.pi / 2


def normalize_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` boxes in the le90 form: ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)``."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    swap = w < h
    theta = torch.where(swap, theta + math.pi / 2, theta)
    return torch.stack([cx, cy, torch.maximum(w, h), torch.minimum(w, h), wrap_angle(theta)], dim=-1)


def box_to_quad(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` oriented boxes -> ``(..., 4, 2)`` corners, clockwise on screen."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    signs = boxes.new_tensor(_CORNER_SIGNS)  # (4, 2)
    u = signs[:, 0] * w[..., None]  # along the w side
    v = signs[:, 1] * h[..., None]  # along the h side
    x = cx[..., None] + u * cos[..., None] - v * sin[..., None]
    y = cy[..., None] + u * sin[..., None] + v * cos[..., None]
    return torch.stack([x, y], dim=-1)


def quad_to_box(quads: torch.Tensor) -> torch.Tensor:
    """``(..., 4, 2)`` quadrilaterals (any corner order) -> ``(..., 5)`` le90 boxes: the minimum-area
    enclosing rectangle. That rectangle has a side along an edge of the convex hull, and every hull edge of
    four points joins two of them, so the six point pairs are the only directions to try."""
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]], device=quads.device)
    directions = quads[..., pairs[:, 1], :] - quads[..., pairs[:, 0], :]  # (..., 6, 2)
    length = directions.norm(dim=-1, keepdim=True)
    d = directions / length.clamp(min=1e-12)
    n = torch.stack([-d[..., 1], d[..., 0]], dim=-1)
    u = torch.einsum("...pc,...kc->...kp", quads, d)  # (..., 6, 4): corners projected on each direction
    v = torch.einsum("...pc,...kc->...kp", quads, n)
    w = u.amax(-1) - u.amin(-1)
    h = v.amax(-1) - v.amin(-1)
    area = torch.where(length[..., 0] > 1e-12, w * h, torch.full_like(w, float("inf")))
    best = area.argmin(-1, keepdim=True)  # (..., 1)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, best)[..., 0]

    u_mid = pick((u.amax(-1) + u.amin(-1)) / 2)
    v_mid = pick((v.amax(-1) + v.amin(-1)) / 2)
    dx, dy = pick(d[..., 0]), pick(d[..., 1])
    cx = u_mid * dx - v_mid * dy
    cy = u_mid * dy + v_mid * dx
    box = torch.stack([cx, cy, pick(w), pick(h), torch.atan2(dy, dx)], dim=-1)
    return normalize_boxes(box)


def box_to_hbox(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` oriented boxes -> ``(..., 4)`` enclosing axis-aligned boxes ``(x1, y1, x2, y2)``."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
    half_x = (w * cos + h * sin) / 2
    half_y = (w * sin + h * cos) / 2
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=-1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _polygon_area(quads: torch.Tensor) -> torch.Tensor:
    """Shoelace area of ``(..., P, 2)`` simple polygons."""
    return _cross(quads, quads.roll(-1, dims=-2)).sum(-1).abs() / 2


def _inside(points: torch.Tensor, quads: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(K, P, 2)`` points inside (or within ``tolerance`` pixels of) the ``(K, 4, 2)`` convex quads."""
    edges = quads.roll(-1, dims=-2) - quads  # (K, 4, 2)
    orientation = torch.sign(_cross(edges[:, 0], edges[:, 1]) + _cross(edges[:, 2], edges[:, 3]))
    side = _cross(edges[:, None], points[:, :, None] - quads[:, None])  # (K, P, 4)
    slack = tolerance * edges.norm(dim=-1)[:, None]
    return (side * orientation[:, None, None] >= -slack).all(-1)


def _intersection_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Area of the intersection of convex quads ``a[k]`` and ``b[k]`` (``(K, 4, 2)`` each).

    The intersection is a convex polygon whose vertices are among: corners of one quad inside the other and
    crossings of their edges (24 candidates). The valid ones are ordered by angle around their mean and the
    shoelace formula gives the area; invalid slots repeat the first vertex and add nothing.
    """
    scale = torch.cat([a, b], dim=1).flatten(1).abs().amax(-1).clamp(min=1.0)
    offset = a.mean(dim=1, keepdim=True)  # work near the origin for float32 accuracy
    a, b = a - offset, b - offset
    tolerance = 1e-5 * float(scale.max())
    a_in_b = _inside(a, b, tolerance)
    b_in_a = _inside(b, a, tolerance)
    r = (a.roll(-1, dims=1) - a)[:, :, None]  # (K, 4, 1, 2) edges of a
    s = (b.roll(-1, dims=1) - b)[:, None]  # (K, 1, 4, 2) edges of b
    qp = b[:, None] - a[:, :, None]  # (K, 4, 4, 2)
    denom = _cross(r, s)
    parallel = denom.abs() < 1e-12
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = _cross(qp, s) / safe
    u = _cross(qp, r) / safe
    crosses = ~parallel & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    crossing_points = (a[:, :, None] + t[..., None] * r).flatten(1, 2)  # (K, 16, 2)
    points = torch.cat([a, b, crossing_points], dim=1)  # (K, 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crosses.flatten(1)], dim=1)
    count = valid.sum(1, keepdim=True)
    centre = (points * valid[..., None]).sum(1) / count.clamp(min=1)
    rel = points - centre[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid ones sort last
    order = angle.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand_as(rel))
    valid = valid.gather(1, order)
    rel = torch.where(valid[..., None], rel, rel[:, :1])
    area = _cross(rel, rel.roll(-1, dims=1)).sum(1).abs() / 2
    return torch.where(count[:, 0] >= 3, area, torch.zeros_like(area))


def _quad_bounds(quads: torch.Tensor) -> torch.Tensor:
    return torch.cat([quads.amin(dim=-2), quads.amax(dim=-2)], dim=-1)


def convex_quad_iou(a: torch.Tensor, b: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """IoU of convex quadrilaterals ``(N, 4, 2)`` and ``(M, 4, 2)``: ``(N, M)``, or ``(N,)`` for
    ``aligned`` pairs ``a[i], b[i]``. Only pairs whose axis-aligned bounds overlap are clipped."""
    area_a, area_b = _polygon_area(a), _polygon_area(b)
    if aligned:
        inter = _intersection_area(a, b) if a.shape[0] else a.new_zeros(0)
        return inter / (area_a + area_b - inter).clamp(min=1e-9)
    iou = a.new_zeros(a.shape[0], b.shape[0])
    if iou.numel() == 0:
        return iou
    ba, bb = _quad_bounds(a), _quad_bounds(b)
    lt = torch.maximum(ba[:, None, :2], bb[None, :, :2])
    rb = torch.minimum(ba[:, None, 2:], bb[None, :, 2:])
    i, j = ((rb - lt) > 0).all(-1).nonzero(as_tuple=True)
    for start in range(0, i.numel(), _PAIR_CHUNK):
        ii, jj = i[start:start + _PAIR_CHUNK], j[start:start + _PAIR_CHUNK]
        inter = _intersection_area(a[ii], b[jj])
        iou[ii, jj] = inter / (area_a[ii] + area_b[jj] - inter).clamp(min=1e-9)
    return iou


def rotated_box_iou(a: torch.Tensor, b: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """IoU of oriented boxes ``(N, 5)`` and ``(M, 5)``: ``(N, M)``, or ``(N,)`` when ``aligned``."""
    return convex_quad_iou(box_to_quad(a.float()), box_to_quad(b.float()), aligned=aligned)


def _overlapping_pairs(bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``i < j`` whose axis-aligned ``bounds`` ``(x1, y1, x2, y2)`` overlap.

    A sweep along x: with the boxes sorted by their left edge, the candidates of a box are the boxes after it whose
    left edge lies before its right edge, a range found by binary search. The work follows the pairs that overlap
    along x, not the square of the number of boxes (boxes spread over a scene, or shifted apart by class, are
    never compared), and the candidates are made at most :data:`_PAIR_CHUNK` at a time.
    """
    empty = torch.zeros(0, dtype=torch.long, device=bounds.device)
    count = len(bounds)
    if count < 2:
        return empty, empty
    order = bounds[:, 0].argsort()
    ordered = bounds[order]
    rank = torch.arange(count, device=bounds.device)
    ends = torch.searchsorted(ordered[:, 0].contiguous(), ordered[:, 2].contiguous(), side="left")
    candidates = (ends - rank - 1).clamp(min=0)
    total = candidates.cumsum(0)
    first, second = [], []
    start = 0
    while start < count:
        done = int(total[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(total, done + _PAIR_CHUNK, side="right")))
        per_row = candidates[start:stop]
        i = rank[start:stop].repeat_interleave(per_row)
        if len(i):
            row_start = (per_row.cumsum(0) - per_row).repeat_interleave(per_row)
            j = i + 1 + torch.arange(len(i), device=bounds.device) - row_start
            a, b = ordered[i], ordered[j]
            overlap = ((torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])) > 0).all(-1)
            first.append(order[i[overlap]])
            second.append(order[j[overlap]])
        start = stop
    if not first:
        return empty, empty
    i, j = torch.cat(first), torch.cat(second)
    return torch.minimum(i, j), torch.maximum(i, j)


def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS of oriented boxes; indices of the kept boxes by decreasing score.

    Greedy NMS keeps box ``i`` exactly when no kept box of higher score overlaps it by more than the
    threshold. Starting from "all kept" and re-applying that rule settles on the greedy answer (the first
    ``k`` boxes are right after ``k`` rounds); the number of rounds is the longest chain of suppressions,
    a few in practice, and each round is one tensor operation over the overlapping pairs.
    """
    order = scores.argsort(descending=True)
    quads = box_to_quad(boxes[order].float())
    i, j = _overlapping_pairs(_quad_bounds(quads))  # i ranks above j
    if i.numel():
        ious = torch.cat([convex_quad_iou(quads[i[s:s + _PAIR_CHUNK]], quads[j[s:s + _PAIR_CHUNK]], aligned=True)
                          for s in range(0, i.numel(), _PAIR_CHUNK)])
        i, j = i[ious > iou_threshold], j[ious > iou_threshold]
    return order[_greedy_survivors(i, j, order.numel())]


def rotated_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    """NMS within each group (class, image): boxes of different groups are shifted apart so that they never
    overlap, then one :func:`rotated_nms` runs over all of them."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    bounds = box_to_hbox(boxes.float())
    span = float(bounds[:, 2].max() - bounds[:, 0].min()) + 1.0
    shifted = boxes.float().clone()
    shifted[:, 0] += groups.to(shifted.dtype) * span
    return rotated_nms(shifted, scores, iou_threshold)


def rotated_multiclass_nms(boxes: torch.Tensor, box_index: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                           iou_threshold: float) -> torch.Tensor:
    """Class-wise greedy NMS of candidates that share boxes: candidate ``k`` is ``boxes[box_index[k]]`` in class
    ``labels[k]`` with ``scores[k]``; indices of the kept candidates by decreasing score.

    It keeps what :func:`rotated_batched_nms` of the candidates' boxes by class keeps, but a pair of boxes has its
    IoU computed once, however many classes it is a candidate in together. A detector whose box regression is
    class-agnostic (Oriented R-CNN's) proposes one box for every class that scores it above the threshold: all of
    them for an untrained box head, which scores every class near chance, and there the classes share the work
    instead of repeating it.
    """
    order = scores.argsort(descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    used, local = box_index.unique(return_inverse=True)
    quads = box_to_quad(boxes[used].float())
    # (box, class) -> rank of that candidate, -1 where the box is no candidate in the class.
    table = torch.full((len(used), int(labels.max()) + 1 if len(labels) else 1), -1, dtype=torch.long,
                       device=boxes.device)
    table[local, labels] = rank
    a, b = _overlapping_pairs(_quad_bounds(quads))
    first, second = [], []
    rows = max(1, _PAIR_CHUNK // table.shape[1])
    for start in range(0, a.numel(), rows):
        ra, rb = table[a[start:start + rows]], table[b[start:start + rows]]  # (pairs, classes)
        shared = (ra >= 0) & (rb >= 0)
        pair = shared.any(1)
        ra, rb, shared = ra[pair], rb[pair], shared[pair]
        if not len(ra):
            continue
        iou = convex_quad_iou(quads[a[start:start + rows][pair]], quads[b[start:start + rows][pair]], aligned=True)
        shared &= (iou > iou_threshold)[:, None]
        first.append(torch.minimum(ra, rb)[shared])
        second.append(torch.maximum(ra, rb)[shared])
    i = torch.cat(first) if first else rank.new_zeros(0)
    j = torch.cat(second) if second else rank.new_zeros(0)
    return order[_greedy_survivors(i, j, len(order))]


def _greedy_survivors(i: torch.Tensor, j: torch.Tensor, count: int) -> torch.Tensor:
    """Which of ``count`` boxes ranked by decreasing score greedy NMS keeps, given the pairs ``i`` (ranked higher)
    and ``j`` that overlap above the threshold (see :func:`rotated_nms`)."""
    keep = torch.ones(count, dtype=torch.bool, device=i.device)
    while True:
        suppressed = torch.zeros_like(keep)
        suppressed[j[keep[i]]] = True
        updated = ~suppressed
        if torch.equal(updated, keep):
            return keep
        keep = updated


def rotated_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int = 7, spatial_scale: float = 1.0,
                      sampling_ratio: int = 2) -> torch.Tensor:
    """Rotated RoI Align: ``(B, C, H, W)`` features, ``(K, 6)`` RoIs ``(batch index, cx, cy, w, h, theta)`` in
    image pixels -> ``(K, C, output_size, output_size)``.

    Each output bin averages ``sampling_ratio**2`` bilinear samples taken on a regular grid in the box's own
    frame (rows along ``h``, columns along ``w``), the sampling of mmcv's ``RoIAlignRotated`` with a fixed
    ``sampling_ratio``. Image point ``x`` lies at ``x * spatial_scale`` in feature pixels whose centres are at
    ``i + 0.5`` (``aligned=True``). A sample's neighbours outside the map count as zeros (the convention of
    ``grid_sample``; mmcv repeats the border pixel for samples within one pixel outside it).

    A bin is a fixed weighted sum of feature pixels (its samples' bilinear taps, ``4 * sampling_ratio**2`` of
    them), so every bin of every RoI is one bag of :func:`~torch.nn.functional.embedding_bag` over the pixels'
    channel vectors: one call for all the RoIs, and no ``(samples, C)`` intermediate, forward or backward.
    """
    num_rois, (batch, channels, height, width) = rois.shape[0], features.shape
    if num_rois == 0:
        return features.new_zeros(0, channels, output_size, output_size)
    taps, weights = _bilinear_taps(rois, (height, width), output_size, spatial_scale, sampling_ratio)
    pixels = features.float().permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    bins = F.embedding_bag(taps, pixels, per_sample_weights=weights, mode="sum")  # (K * P * P, C)
    return bins.unflatten(0, (num_rois, output_size, output_size)).permute(0, 3, 1, 2).to(features.dtype)


def _bilinear_taps(rois: torch.Tensor, size: tuple[int, int], output_size: int, spatial_scale: float,
                   sampling_ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin of each RoI (``K * P * P`` rows), the flat indices of the ``(B * H * W)`` feature pixels its samples
    interpolate between and their weights (bilinear weight over the samples per bin; zero for a pixel outside the
    map, whose index is clamped into it): two ``(K * P * P, 4 * sampling_ratio**2)`` tensors."""
    height, width = size
    num_rois, bins, ratio = len(rois), output_size, sampling_ratio
    samples = bins * ratio
    # Sampling positions in float32 whatever the feature type: in bf16 a coordinate near 1000 px would be
    # off by up to 4 px.
    steps = (torch.arange(samples, device=rois.device, dtype=torch.float32) + 0.5) / samples - 0.5
    _, cx, cy, w, h, theta = rois.float().unbind(-1)
    u = steps[None, None, :] * w[:, None, None]  # (K, 1, S): columns along w
    v = steps[None, :, None] * h[:, None, None]  # (K, S, 1): rows along h
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    # Feature-pixel coordinates with pixel i centred at i: (K, S, S), then the samples of each bin together.
    x = (cx[:, None, None] + u * cos - v * sin) * spatial_scale - 0.5
    y = (cy[:, None, None] + u * sin + v * cos) * spatial_scale - 0.5

    def by_bin(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(num_rois, bins, ratio, bins, ratio).transpose(2, 3).reshape(num_rois, bins, bins, -1)

    x, y = by_bin(x), by_bin(y)
    left, top = x.floor(), y.floor()
    right_weight, bottom_weight = x - left, y - top
    first = rois[:, 0].long()[:, None, None, None] * (height * width)
    taps, weights = [], []
    for row, row_weight in ((top, 1 - bottom_weight), (top + 1, bottom_weight)):
        for column, column_weight in ((left, 1 - right_weight), (left + 1, right_weight)):
            inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
            taps.append(first + (row.clamp(0, height - 1) * width + column.clamp(0, width - 1)).long())
            weights.append(row_weight * column_weight * inside / ratio**2)
    return torch.cat(taps, -1).reshape(num_rois * bins * bins, -1), torch.cat(weights, -1).reshape(
        num_rois * bins * bins, -1)
