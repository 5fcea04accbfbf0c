"""Oriented R-CNN: box coders invert, assignments follow the thresholds, one CPU training step learns."""
from __future__ import annotations

import math

import torch
from rotated_reference import grid_sample_roi_align

from lemevit.models import oriented_rcnn
from lemevit.models.oriented_rcnn import MidpointOffsetCoder, OrientedRCNN, RotatedDeltaCoder, _max_iou_assign
from lemevit.ops import box_to_hbox, normalize_boxes, rotated_batched_nms, rotated_box_iou


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 200
    size = torch.rand(n, 2, generator=g) * 60 + 4
    theta = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return normalize_boxes(torch.cat([centre, size, theta], dim=1))


def test_midpoint_offset_coder_round_trip():
    boxes = random_boxes(50, 0)
    anchors = box_to_hbox(boxes) + torch.randn(50, 4) * 3
    coder = MidpointOffsetCoder()
    decoded = coder.decode(anchors, coder.encode(anchors, boxes))
    assert rotated_box_iou(decoded, boxes, aligned=True).min() > 0.999


def test_rotated_delta_coder_round_trip_takes_the_smaller_turn():
    boxes, proposals = random_boxes(50, 1), random_boxes(50, 2)
    coder = RotatedDeltaCoder()
    deltas = coder.encode(proposals, boxes)
    assert (deltas[:, 4].abs() * 0.1 <= math.pi / 4 + 1e-5).all()
    assert rotated_box_iou(coder.decode(proposals, deltas), boxes, aligned=True).min() > 0.999


def test_max_iou_assignment():
    iou = torch.tensor([[0.8, 0.1], [0.4, 0.2], [0.1, 0.35], [0.0, 0.0]])
    assert _max_iou_assign(iou, 0.7, 0.3, 0.3, low_quality=False).tolist() == [0, -2, -2, -1]
    # Object 1's best item (0.35 >= 0.3) becomes positive.
    assert _max_iou_assign(iou, 0.7, 0.3, 0.3, low_quality=True).tolist() == [0, -2, 1, -1]


def test_one_training_step_on_cpu_lowers_the_loss_and_inference_runs(monkeypatch):
    torch.manual_seed(0)
    model = OrientedRCNN("resnet10t", num_classes=3, fpn_channels=32, rpn_proposals=200, test_proposals=100)
    images = torch.randn(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[40.0, 50, 40, 16, 0.5], [90, 90, 30, 20, -1.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(2):
        loss = model(images, targets)
        assert set(loss) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg"}
        assert all(torch.isfinite(v) for v in loss.values()) and loss["rpn_reg"] > 0 and loss["roi_reg"] > 0
        total = sum(loss.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[1] < losses[0]
    assert model.backbone.feature_info.reduction()[0] == 4
    model.eval()
    detections = model(images)
    assert len(detections) == 2
    for d in detections:
        assert d["boxes"].shape[1] == 5 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
    # The detections are those of the grid_sample RoI Align and the NMS class by class the detector had before.
    monkeypatch.setattr(oriented_rcnn, "rotated_roi_align", grid_sample_roi_align)
    monkeypatch.setattr(oriented_rcnn, "rotated_multiclass_nms",
                        lambda boxes, index, scores, labels, nms_iou: rotated_batched_nms(boxes[index], scores,
                                                                                          labels, nms_iou))
    before = model(images)
    assert sum(len(d["scores"]) for d in detections) > 20
    for found, expected in zip(detections, before, strict=True):
        assert found["labels"].tolist() == expected["labels"].tolist()
        torch.testing.assert_close(found["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(found["boxes"], expected["boxes"], rtol=1e-5, atol=1e-3)
