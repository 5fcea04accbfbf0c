"""Oriented-box geometry against shapely: conversions, IoU, NMS and rotated RoI Align."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from lemevit.ops import (
    box_to_hbox,
    box_to_quad,
    convex_quad_iou,
    normalize_boxes,
    quad_to_box,
    rotated_batched_nms,
    rotated_box_iou,
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
