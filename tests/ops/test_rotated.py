"""Oriented-box geometry against shapely: conversions, IoU, NMS and rotated RoI Align."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rotated_reference import grid_sample_roi_align
from shapely.geometry import Polygon

from lemevit.ops import (
    box_to_hbox,
    box_to_quad,
    convex_quad_iou,
    normalize_boxes,
    quad_to_box,
    rotated_batched_nms,
    rotated_box_iou,
    rotated_multiclass_nms,
    rotated_nms,
    rotated_roi_align,
)


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 60
    size = torch.rand(n, 2, generator=generator) * 40 + 2
    theta = (torch.rand(n, 1, generator=generator) - 0.5) * math.pi
    return normalize_boxes(torch.cat([centre, size, theta], dim=1).double())


def shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a), Polygon(b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def test_rotated_iou_matches_shapely_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(40, g), random_boxes(30, g)
    # Include identical boxes and boxes sharing an edge direction, the cases where candidate vertices coincide.
    b[:5] = a[:5]
    b[5:8, :2] = a[5:8, :2] + 3
    b[5:8, 4] = a[5:8, 4]
    iou = rotated_box_iou(a.float(), b.float())
    qa, qb = box_to_quad(a).numpy(), box_to_quad(b).numpy()
    expected = np.array([[shapely_iou(x, y) for y in qb] for x in qa])
    assert (expected > 0.01).sum() > 50  # the test exercises many overlapping pairs
    np.testing.assert_allclose(iou.numpy(), expected, atol=2e-4)
    aligned = rotated_box_iou(a[:30].float(), b.float(), aligned=True)
    np.testing.assert_allclose(aligned.numpy(), np.diag(expected[:30]), atol=2e-4)


def test_convex_quad_iou_of_general_quadrilaterals_matches_shapely():
    square = torch.tensor([[[0.0, 0], [10, 0], [10, 10], [0, 10]]])
    kite = torch.tensor([[[5.0, -2], [14, 5], [5, 12], [2, 5]]])
    expected = shapely_iou(square[0].numpy(), kite[0].numpy())
    assert convex_quad_iou(square, kite)[0, 0].item() == pytest.approx(expected, abs=1e-5)
    # Either vertex orientation gives the same answer.
    assert convex_quad_iou(square.flip(1), kite)[0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_quad_box_quad_round_trip_and_le90_convention():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(100, g)
    assert (boxes[:, 2] >= boxes[:, 3]).all()
    assert (boxes[:, 4] >= -math.pi / 2).all() and (boxes[:, 4] < math.pi / 2).all()
    quads = box_to_quad(boxes)
    # Any starting corner and either direction describe the same box.
    shuffled = quads.roll(2, dims=1).flip(1)
    back = quad_to_box(shuffled)
    np.testing.assert_allclose(back.numpy(), boxes.numpy(), atol=1e-6)
    np.testing.assert_allclose(box_to_quad(back).roll(-2, 1).flip(1).numpy(), shuffled.numpy(), atol=1e-6)
    # A DOTA label: 40x20 rectangle turned 30 degrees clockwise on screen.
    box = torch.tensor([[100.0, 50.0, 40.0, 20.0, math.radians(30)]])
    assert quad_to_box(box_to_quad(box))[0, 4].item() == pytest.approx(math.radians(30), abs=1e-5)
    hbox = box_to_hbox(box)[0]
    quad = box_to_quad(box)[0]
    np.testing.assert_allclose(hbox.numpy(), [*quad.amin(0).numpy(), *quad.amax(0).numpy()], atol=1e-4)


def test_quad_to_box_of_an_irregular_quadrilateral_is_its_minimum_area_rectangle():
    quad = torch.tensor([[[0.0, 0], [10, 1], [9, 6], [1, 5]]], dtype=torch.float64)
    box = quad_to_box(quad)[0]
    rectangle = Polygon(box_to_quad(box).numpy())
    assert rectangle.area == pytest.approx(Polygon(quad[0].numpy()).minimum_rotated_rectangle.area, rel=1e-6)
    assert rectangle.buffer(1e-6).contains(Polygon(quad[0].numpy()))


def test_rotated_nms_on_a_hand_made_case():
    boxes = torch.tensor([
        [50.0, 50, 40, 10, 0.0],  # 0: best
        [50.0, 52, 40, 10, 0.0],  # 1: IoU 0.67 with 0 -> suppressed
        [50.0, 50, 40, 10, math.pi / 2 - 0.01],  # 2: a cross over 0, IoU ~0.14 -> kept at 0.3
        [52.0, 50, 40, 10, math.pi / 2 - 0.01],  # 3: overlaps 2 strongly -> suppressed by 2
        [200.0, 200, 10, 10, 0.3],  # 4: far away
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1])
    assert rotated_nms(boxes, scores, 0.3).tolist() == [0, 2, 4]
    # The chain: 1 suppressed by 0 must not suppress 2 even where 1 and 2 overlap more than 2 and 0 do.
    assert rotated_nms(boxes, scores, 0.1).tolist() == [0, 4]
    groups = torch.tensor([0, 1, 0, 0, 0])
    assert sorted(rotated_batched_nms(boxes, scores, groups, 0.3).tolist()) == [0, 1, 2, 4]


def test_rotated_roi_align_samples_the_rotated_box():
    features = torch.arange(32.0)[None, None].expand(1, 1, 32, 32).clone()  # value = x index
    # An axis-aligned RoI covering x in [8, 16) of image pixels at stride 1: bin means are column centres.
    rois = torch.tensor([[0, 12.0, 16.0, 8.0, 4.0, 0.0], [0, 12.0, 16.0, 8.0, 4.0, math.pi / 2]])
    out = rotated_roi_align(features, rois, output_size=4, spatial_scale=1.0, sampling_ratio=2)
    columns = torch.tensor([9.0, 11.0, 13.0, 15.0]) - 0.5  # bin centres; pixel i (value i) is centred at i + 0.5
    torch.testing.assert_close(out[0, 0], columns.expand(4, 4))
    # Turned a quarter: the w axis runs down the image, so the values vary along the rows only, around x=11.5.
    assert torch.allclose(out[1, 0], out[1, 0, :, :1].expand(4, 4))
    torch.testing.assert_close(out[1, 0].mean(), torch.tensor(11.5))


def random_rois(n: int, images: int, side: float, generator: torch.Generator) -> torch.Tensor:
    """RoIs anywhere over ``side``-pixel images, some overhanging their border, tiny to larger than the image."""
    image = torch.randint(0, images, (n, 1), generator=generator).float()
    centre = torch.rand(n, 2, generator=generator) * side * 1.2 - side * 0.1
    size = torch.rand(n, 2, generator=generator) ** 2 * side + 0.5
    theta = (torch.rand(n, 1, generator=generator) - 0.5) * math.pi
    return torch.cat([image, centre, size, theta], dim=1)


@pytest.mark.parametrize(("spatial_scale", "sampling_ratio"), [(1 / 4, 2), (1 / 16, 2), (1 / 8, 3)])
def test_rotated_roi_align_equals_the_grid_sample_one_on_random_boxes(spatial_scale, sampling_ratio):
    g = torch.Generator().manual_seed(4)
    features = torch.randn(3, 16, 24, 20, generator=g, requires_grad=True)
    rois = random_rois(300, 3, 20 / spatial_scale, g)
    out = rotated_roi_align(features, rois, 7, spatial_scale, sampling_ratio)
    expected = grid_sample_roi_align(features, rois, 7, spatial_scale, sampling_ratio)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # The gradient that reaches the pyramid in training too.
    weights = torch.randn(out.shape, generator=g)
    grad, = torch.autograd.grad((out * weights).sum(), features)
    expected_grad, = torch.autograd.grad((expected * weights).sum(), features)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_rotated_roi_align_of_axis_aligned_boxes_equals_torchvision_roi_align():
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 8, 32, 40, generator=g)
    # Inside the map by a pixel at least: torchvision (like mmcv) repeats the border pixel just outside it.
    x1y1 = torch.rand(50, 2, generator=g) * 60 + 8
    x2y2 = x1y1 + torch.rand(50, 2, generator=g) * 60 + 1
    image = torch.randint(0, 2, (50, 1), generator=g).float()
    rois = torch.cat([image, (x1y1 + x2y2) / 2, x2y2 - x1y1, torch.zeros(50, 1)], dim=1)
    out = rotated_roi_align(features, rois, 7, 1 / 4, 2)
    expected = roi_align(features, torch.cat([image, x1y1, x2y2], dim=1), 7, 1 / 4, 2, aligned=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_quarter_turned_box_gives_the_crop_of_the_unturned_box_turned_a_quarter():
    g = torch.Generator().manual_seed(6)
    features = torch.randn(1, 4, 32, 32, generator=g)
    square = torch.tensor([[0, 60.0, 70.0, 40.0, 40.0, 0.0]])
    turned = square.clone()
    turned[0, 5] = math.pi / 2
    crop = rotated_roi_align(features, square, 5, 1 / 4, 2)
    # The box's w axis now runs down the image and its h axis to the left: bin (i, j) is the crop's (j, P-1-i).
    torch.testing.assert_close(rotated_roi_align(features, turned, 5, 1 / 4, 2), torch.rot90(crop, 1, dims=(2, 3)),
                               rtol=1e-5, atol=1e-5)


def mmcv_roi_align_rotated(features: np.ndarray, roi: list[float], bins: int, spatial_scale: float,
                           ratio: int) -> np.ndarray:
    """mmcv's RoIAlignRotated forward (aligned=True, clockwise=True, a fixed sampling ratio) for one RoI, point by
    point as its CPU kernel defines it."""
    channels, height, width = features.shape
    _, cx, cy, w, h, theta = roi
    cx, cy, w, h = cx * spatial_scale - 0.5, cy * spatial_scale - 0.5, w * spatial_scale, h * spatial_scale
    theta = -theta  # clockwise
    bin_w, bin_h = w / bins, h / bins
    cos, sin = math.cos(theta), math.sin(theta)
    out = np.zeros((channels, bins, bins))
    for ph in range(bins):
        for pw in range(bins):
            total = np.zeros(channels)
            for iy in range(ratio):
                yy = -h / 2 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    xx = -w / 2 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    y, x = yy * cos - xx * sin + cy, yy * sin + xx * cos + cx
                    if y < -1 or y > height or x < -1 or x > width:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
                    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                    y, x = (float(y0) if y0 == height - 1 else y), (float(x0) if x0 == width - 1 else x)
                    ly, lx = y - y0, x - x0
                    total += ((1 - ly) * (1 - lx) * features[:, y0, x0] + (1 - ly) * lx * features[:, y0, x1]
                              + ly * (1 - lx) * features[:, y1, x0] + ly * lx * features[:, y1, x1])
            out[:, ph, pw] = total / ratio**2
    return out


@pytest.mark.parametrize("degrees", [30.0, -75.0, 90.0])
def test_rotated_roi_align_follows_mmcv_roi_align_rotated_inside_the_map(degrees):
    g = torch.Generator().manual_seed(7)
    features = torch.randn(1, 3, 20, 20, generator=g)
    roi = [0, 20.0, 18.0, 30.0, 14.0, math.radians(degrees)]  # inside the 40 px image by 3 px at least
    out = rotated_roi_align(features, torch.tensor([roi]), 4, 1 / 2, 2)[0]
    expected = mmcv_roi_align_rotated(features[0].double().numpy(), roi, 4, 1 / 2, 2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_rotated_nms_of_axis_aligned_boxes_equals_torchvision_nms(monkeypatch):
    from torchvision.ops import nms

    import lemevit.ops.rotated as rotated

    monkeypatch.setattr(rotated, "_PAIR_CHUNK", 1000)  # several blocks of rows and of pairs
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g) * 100
    wh = torch.rand(300, 2, generator=g) * 30 + 5
    boxes = torch.cat([xy, wh, torch.zeros(300, 1)], dim=1)
    scores = torch.rand(300, generator=g)
    corners = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    for threshold in (0.1, 0.5):
        assert rotated_nms(boxes, scores, threshold).tolist() == nms(corners, scores, threshold).tolist()


@pytest.mark.parametrize("classes_per_box", [1, 4, 15])
def test_multiclass_nms_of_shared_boxes_keeps_what_class_wise_nms_keeps(classes_per_box):
    g = torch.Generator().manual_seed(8)
    boxes = random_boxes(120, g).float()
    # Each box is a candidate in classes_per_box of 15 classes, with a score of its own in each.
    box_index = torch.arange(120).repeat_interleave(classes_per_box)
    labels = torch.stack([torch.randperm(15, generator=g)[:classes_per_box] for _ in range(120)]).flatten()
    scores = torch.rand(len(box_index), generator=g)
    for threshold in (0.1, 0.5):
        expected = rotated_batched_nms(boxes[box_index], scores, labels, threshold)
        kept = rotated_multiclass_nms(boxes, box_index, scores, labels, threshold)
        assert kept.tolist() == expected.tolist()
    assert rotated_multiclass_nms(boxes, box_index[:0], scores[:0], labels[:0], 0.1).tolist() == []
