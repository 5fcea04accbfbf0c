"""Oriented R-CNN (Xie et al., ICCV 2021) over any backbone with stride-4/8/16/32 features, in plain PyTorch.

The layout and training settings are those of the published configuration used for LeMeViT's DOTA result
(mmrotate ``oriented_rcnn_r50_fpn_1x_dota_le90``):

- FPN with 256 channels on strides 4..32, plus P6 by max-pooling P5 (stride 64);
- oriented RPN: one anchor size (8 x stride) and aspect ratios 0.5/1/2 per level; a 3x3 conv, then per
  anchor an objectness logit and six midpoint-offset deltas ``(dx, dy, dw, dh, d_alpha, d_beta)``; anchors
  are assigned by the IoU of their box with the objects' enclosing axis-aligned boxes (positive >= 0.7,
  negative < 0.3, and each object's best anchors when >= 0.3), 256 sampled per image (half positive at
  most); binary cross-entropy and smooth L1 (beta 1/9); 2000 proposals per level before and per image after
  an NMS (IoU 0.8) on the proposals' enclosing boxes;
- rotated RoI Align 7x7 (2x2 samples per bin) on the level ``floor(log2(sqrt(wh) / 56))`` of P2..P5;
- a box head of two shared 1024-unit layers, a softmax classifier over the classes and background, and
  class-agnostic deltas ``(dx, dy, dw, dh, d_theta)`` in the proposal's frame (normalised by 0.1, 0.1, 0.2,
  0.2, 0.1; the w/h swap that gives the smaller angle change is taken); RoIs are proposals plus the
  ground-truth boxes, assigned by rotated IoU (positive >= 0.5), 512 sampled per image (a quarter positive
  at most); cross-entropy and smooth L1 (beta 1);
- inference: scores above 0.05, the 2000 best (class, box) candidates to a class-wise rotated NMS at IoU 0.1, at
  most 2000 boxes per image (the test settings ``score_thr``, ``nms_pre``, ``nms`` and ``max_per_img`` of mmrotate's
  ``oriented_rcnn_r50_fpn_1x_dota_le90``).

Boxes are le90 ``(cx, cy, w, h, theta)`` in input pixels (see :mod:`lemevit.ops.rotated`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou

from lemevit.errors import ConfigError
from lemevit.models.factory import DENSE_STRIDES, create_dense_encoder
from lemevit.ops.rotated import (
    box_to_hbox,
    box_to_quad,
    normalize_boxes,
    quad_to_box,
    rotated_box_iou,
    rotated_multiclass_nms,
    rotated_roi_align,
    wrap_angle,
)
from lemevit.timing import StageTimer

__all__ = ["FPN", "MidpointOffsetCoder", "OrientedRCNN", "RotatedDeltaCoder", "StagesOnRuntime"]

# exp() of a predicted log-scale is capped at 1000/16, as in mmdet's coders.
_MAX_LOG_SCALE = abs(math.log(16 / 1000))


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest upsampling, 3x3 outputs, P6 = max-pool(P5, stride 2)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.outputs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.laterals, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.outputs, laterals, strict=True)]
        return outs + [F.max_pool2d(outs[-1], kernel_size=1, stride=2)]


class MidpointOffsetCoder:
    """The oriented RPN's box coding: anchor ``(x1, y1, x2, y2)`` -> oriented box through the box's enclosing
    axis-aligned box ``(x, y, w, h)`` and the offsets of the top and right vertices from the midpoints of its
    top and right sides (``alpha`` along x, ``beta`` along y), normalised by ``w`` and ``h``."""

    def __init__(self, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5)):
        self.stds = stds

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        quads = box_to_quad(boxes)  # (N, 4, 2) clockwise on screen
        low, high = quads.amin(1), quads.amax(1)
        centre, size = (low + high) / 2, (high - low).clamp(min=1e-6)
        # The top vertex (smallest y; the left one of a flat top); the next one clockwise is the right vertex.
        key = quads[..., 1] + 1e-3 * quads[..., 0]
        top = key.argmin(1)
        rows = torch.arange(len(quads), device=quads.device)
        alpha = quads[rows, top, 0] - centre[:, 0]
        beta = quads[rows, (top + 1) % 4, 1] - centre[:, 1]
        a_centre, a_size = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
        deltas = torch.stack([
            (centre[:, 0] - a_centre[:, 0]) / a_size[:, 0], (centre[:, 1] - a_centre[:, 1]) / a_size[:, 1],
            torch.log(size[:, 0] / a_size[:, 0]), torch.log(size[:, 1] / a_size[:, 1]),
            alpha / size[:, 0], beta / size[:, 1]], dim=1)
        return deltas / deltas.new_tensor(self.stds)

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Deltas -> le90 boxes. The decoded parallelogram becomes a rectangle by stretching its shorter
        diagonal to the length of the longer one, as in the paper."""
        deltas = deltas * deltas.new_tensor(self.stds)
        a_centre, a_size = (anchors[:, :2] + anchors[:, 2:]) / 2, anchors[:, 2:] - anchors[:, :2]
        centre = a_centre + deltas[:, :2] * a_size
        size = a_size * deltas[:, 2:4].clamp(-_MAX_LOG_SCALE, _MAX_LOG_SCALE).exp()
        alpha = deltas[:, 4].clamp(-0.5, 0.5) * size[:, 0]
        beta = deltas[:, 5].clamp(-0.5, 0.5) * size[:, 1]
        to_top = torch.stack([alpha, -size[:, 1] / 2], dim=1)  # centre -> top vertex
        to_right = torch.stack([size[:, 0] / 2, beta], dim=1)  # centre -> right vertex
        half = torch.maximum(to_top.norm(dim=1), to_right.norm(dim=1))[:, None]
        u = to_top / to_top.norm(dim=1, keepdim=True).clamp(min=1e-6) * half
        v = to_right / to_right.norm(dim=1, keepdim=True).clamp(min=1e-6) * half
        c = centre[:, None]
        quads = torch.cat([c + u[:, None], c + v[:, None], c - u[:, None], c - v[:, None]], dim=1)
        return quad_to_box(quads)


class RotatedDeltaCoder:
    """The box head's coding of an oriented box relative to an oriented proposal: centre offset in the
    proposal's frame over its size, log size ratios and the angle change; of ``(w, h, theta)`` and the same
    box written ``(h, w, theta + pi/2)``, the one with the smaller angle change is the target."""

    def __init__(self, stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1)):
        self.stds = stds

    def encode(self, proposals: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        px, py, pw, ph, pa = proposals.unbind(1)
        gx, gy, gw, gh, ga = boxes.unbind(1)
        cos, sin = torch.cos(pa), torch.sin(pa)
        dx = (cos * (gx - px) + sin * (gy - py)) / pw
        dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        turn = wrap_angle(ga - pa)
        turn_swapped = wrap_angle(ga - pa + math.pi / 2)
        keep = turn.abs() < turn_swapped.abs()
        w, h = torch.where(keep, gw, gh), torch.where(keep, gh, gw)
        da = torch.where(keep, turn, turn_swapped)
        deltas = torch.stack([dx, dy, torch.log(w / pw), torch.log(h / ph), da], dim=1)
        return deltas / deltas.new_tensor(self.stds)

    def decode(self, proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        deltas = deltas * deltas.new_tensor(self.stds)
        px, py, pw, ph, pa = proposals.unbind(1)
        dx, dy = deltas[:, 0] * pw, deltas[:, 1] * ph
        cos, sin = torch.cos(pa), torch.sin(pa)
        log_scale = deltas[:, 2:4].clamp(-_MAX_LOG_SCALE, _MAX_LOG_SCALE)
        boxes = torch.stack([px + cos * dx - sin * dy, py + sin * dx + cos * dy, pw * log_scale[:, 0].exp(),
                             ph * log_scale[:, 1].exp(), pa + deltas[:, 4]], dim=1)
        return normalize_boxes(boxes)


def _max_iou_assign(iou: torch.Tensor, pos_thr: float, neg_thr: float, min_pos_iou: float,
                    low_quality: bool) -> torch.Tensor:
    """mmdet's MaxIoUAssigner on an ``(items, objects)`` IoU matrix: index of the assigned object, -1 for
    background, -2 for ignored (between the thresholds)."""
    assigned = torch.full((iou.shape[0],), -2, dtype=torch.long, device=iou.device)
    if iou.shape[1] == 0:
        return assigned.fill_(-1)
    best, index = iou.max(dim=1)
    assigned[(best >= 0) & (best < neg_thr)] = -1
    positive = best >= pos_thr
    assigned[positive] = index[positive]
    if low_quality:
        # Every object also gets the items that overlap it best, when that overlap is good enough.
        object_best = iou.max(dim=0).values
        hits = (iou == object_best[None]) & (object_best[None] >= min_pos_iou)
        item, obj = hits.nonzero(as_tuple=True)
        assigned[item] = obj  # an item best for several objects goes to the last, as in mmdet
    return assigned


def _sample(assigned: torch.Tensor, num: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positive and negative indices: at most ``num * pos_fraction`` positives, negatives fill up."""
    positives = (assigned >= 0).nonzero()[:, 0]
    negatives = (assigned == -1).nonzero()[:, 0]
    positives = positives[torch.randperm(len(positives), device=assigned.device)[:int(num * pos_fraction)]]
    negatives = negatives[torch.randperm(len(negatives), device=assigned.device)[:num - len(positives)]]
    return positives, negatives


class OrientedRCNN(nn.Module):
    """Oriented R-CNN with an FPN over a timm ``features_only`` backbone (see the module docstring).

    ``forward(images)`` in eval mode returns one dict per image with ``boxes`` ``(n, 5)``, ``scores`` and
    ``labels``; ``forward(images, targets)`` in train mode (``targets``: dicts with ``boxes`` and ``labels``)
    returns the four losses.
    """

    def __init__(self, backbone: str, num_classes: int, in_chans: int = 3, fpn_channels: int = 256,
                 drop_path_rate: float = 0.0, backbone_checkpoint: str | Path | dict | None = None,
                 rpn_proposals: int = 2000, test_proposals: int = 2000, score_threshold: float = 0.05,
                 pre_nms_top_k: int = 2000, nms_threshold: float = 0.1, max_detections: int = 2000):
        super().__init__()
        self.num_classes = num_classes
        self.rpn_proposals, self.test_proposals = rpn_proposals, test_proposals
        self.score_threshold, self.nms_threshold, self.max_detections = score_threshold, nms_threshold, max_detections
        # An untrained or noisy box head scores every proposal near chance, above the threshold for every class: the
        # cap keeps the NMS of such a window at the work of a trained one.
        self.pre_nms_top_k = pre_nms_top_k
        self.backbone = create_dense_encoder(backbone, in_chans, checkpoint=backbone_checkpoint,
                                             drop_path_rate=drop_path_rate)
        self.fpn = FPN(self.backbone.feature_info.channels(), fpn_channels)
        self.strides = (*DENSE_STRIDES, 64)
        self.ratios = (0.5, 1.0, 2.0)
        anchors = len(self.ratios)
        self.rpn_conv = nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(fpn_channels, anchors, 1)
        self.rpn_reg = nn.Conv2d(fpn_channels, anchors * 6, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        self.box_fc = nn.Sequential(nn.Flatten(), nn.Linear(fpn_channels * 49, 1024), nn.ReLU(inplace=True),
                                    nn.Linear(1024, 1024), nn.ReLU(inplace=True))
        self.box_cls = nn.Linear(1024, num_classes + 1)  # last index: background
        self.box_reg = nn.Linear(1024, 5)
        nn.init.normal_(self.box_cls.weight, std=0.01)
        nn.init.normal_(self.box_reg.weight, std=0.001)
        nn.init.zeros_(self.box_cls.bias)
        nn.init.zeros_(self.box_reg.bias)
        self.rpn_coder, self.roi_coder = MidpointOffsetCoder(), RotatedDeltaCoder()
        #: Times the stages of inference when set (see :class:`~lemevit.timing.StageTimer`).
        self.timer: StageTimer | None = None

    def stage(self, name: str, device: torch.device) -> AbstractContextManager:
        """A context timing the stage ``name`` with :attr:`timer`, when there is one."""
        return self.timer.stage(name, device) if self.timer is not None else nullcontext()

    # --- anchors and RPN -------------------------------------------------------------------------------
    def anchors(self, sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Per level, ``(H * W * 3, 4)`` anchors ``(x1, y1, x2, y2)``, ordered as the RPN outputs."""
        out = []
        ratios = torch.tensor(self.ratios, device=device)
        for (height, width), stride in zip(sizes, self.strides, strict=True):
            side = 8.0 * stride
            half_w, half_h = side / ratios.sqrt() / 2, side * ratios.sqrt() / 2
            base = torch.stack([-half_w, -half_h, half_w, half_h], dim=1)  # (3, 4)
            ys, xs = torch.meshgrid(torch.arange(height, device=device) * stride,
                                    torch.arange(width, device=device) * stride, indexing="ij")
            shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4).float()
            out.append((shifts + base).reshape(-1, 4))
        return out

    def _rpn(self, pyramid: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Objectness ``(B, HW*3)`` and deltas ``(B, HW*3, 6)`` per level."""
        logits, deltas = [], []
        for x in pyramid:
            x = F.relu(self.rpn_conv(x))
            batch = x.shape[0]
            logits.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(batch, -1))
            deltas.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(batch, -1, 6))
        return logits, deltas

    @torch.no_grad()
    def _proposals(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                   count: int) -> list[torch.Tensor]:
        """Per image ``(n, 5)`` proposals: the ``count`` best anchors of each level decoded, NMS at IoU 0.8
        on their enclosing boxes within each level, the ``count`` best kept."""
        out = []
        for b in range(logits[0].shape[0]):
            boxes, scores, level_ids = [], [], []
            for level, (lg, dt, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
                top = lg[b].topk(min(count, lg.shape[1])).indices
                decoded = self.rpn_coder.decode(an[top], dt[b, top].float())
                boxes.append(decoded)
                scores.append(lg[b, top].float().sigmoid())
                level_ids.append(torch.full_like(top, level))
            boxes, scores, level_ids = torch.cat(boxes), torch.cat(scores), torch.cat(level_ids)
            valid = (boxes[:, 2] > 1e-3) & (boxes[:, 3] > 1e-3)
            boxes, scores, level_ids = boxes[valid], scores[valid], level_ids[valid]
            keep = batched_nms(box_to_hbox(boxes), scores, level_ids, 0.8)[:count]
            out.append(boxes[keep])
        return out

    def _rpn_loss(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                  targets: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas, anchors = torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(anchors)
        cls_losses, reg_losses, sampled = [], [], 0
        for b, target in enumerate(targets):
            gt = target["boxes"].to(anchors)
            assigned = _max_iou_assign(box_iou(anchors, box_to_hbox(gt)), 0.7, 0.3, 0.3, low_quality=True)
            positives, negatives = _sample(assigned, 256, 0.5)
            chosen = torch.cat([positives, negatives])
            labels = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)]).to(logits.dtype)
            cls_losses.append(F.binary_cross_entropy_with_logits(logits[b, chosen], labels, reduction="sum"))
            if len(positives):
                wanted = self.rpn_coder.encode(anchors[positives], gt[assigned[positives]])
                reg_losses.append(F.smooth_l1_loss(deltas[b, positives], wanted, beta=1 / 9, reduction="sum"))
            sampled += len(chosen)
        total = max(sampled, 1)
        reg = torch.stack(reg_losses).sum() if reg_losses else deltas.sum() * 0
        return torch.stack(cls_losses).sum() / total, reg / total

    # --- RoI head --------------------------------------------------------------------------------------
    def _roi_features(self, pyramid: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Rotated RoI Align of ``(K, 6)`` RoIs ``(batch index, box)`` from P2..P5 by their size."""
        scale = (rois[:, 3] * rois[:, 4]).clamp(min=1e-6).sqrt()
        level = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()
        out = pyramid[0].new_zeros(len(rois), pyramid[0].shape[1], 7, 7)
        for i in range(4):
            mask = level == i
            if mask.any():
                out[mask] = rotated_roi_align(pyramid[i], rois[mask], 7, 1 / self.strides[i], 2)
        return out

    def box_head(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, C, 7, 7)`` RoI features -> class logits ``(K, classes + 1)`` and box deltas ``(K, 5)``."""
        hidden = self.box_fc(roi_features)
        return self.box_cls(hidden), self.box_reg(hidden)

    def _box_head(self, pyramid: list[torch.Tensor], proposals: list[torch.Tensor], box_head=None):
        rois = torch.cat([torch.cat([p.new_full((len(p), 1), b), p], dim=1) for b, p in enumerate(proposals)])
        with self.stage("roi align", rois.device):
            features = self._roi_features(pyramid, rois)
        with self.stage("box head", rois.device):
            return (box_head or self.box_head)(features)

    def _roi_loss(self, pyramid: list[torch.Tensor], proposals: list[torch.Tensor],
                  targets: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen_rois, labels, wanted, is_positive = [], [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt, gt_labels = target["boxes"].to(props), target["labels"].to(props.device)
            props = torch.cat([props, gt])
            assigned = _max_iou_assign(rotated_box_iou(props, gt), 0.5, 0.5, 0.5, low_quality=False)
            positives, negatives = _sample(assigned, 512, 0.25)
            chosen = torch.cat([positives, negatives])
            chosen_rois.append(props[chosen])
            labels.append(torch.cat([gt_labels[assigned[positives]],
                                     torch.full_like(negatives, self.num_classes)]))
            wanted.append(self.roi_coder.encode(props[positives], gt[assigned[positives]]))
            is_positive.append(torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)]).bool())
        scores, deltas = self._box_head(pyramid, chosen_rois)
        labels = torch.cat(labels)
        cls_loss = F.cross_entropy(scores, labels)
        positive = torch.cat(is_positive)
        reg_loss = F.smooth_l1_loss(deltas[positive], torch.cat(wanted), beta=1.0, reduction="sum")
        reg_loss = reg_loss / max(len(labels), 1)
        return cls_loss, reg_loss

    @torch.no_grad()
    def _detect(self, pyramid: list[torch.Tensor], proposals: list[torch.Tensor], box_head=None) -> list[dict]:
        scores, deltas = self._box_head(pyramid, proposals, box_head)
        with self.stage("box nms", scores.device):
            probs = scores.float().softmax(1)[:, :-1]
            boxes = self.roi_coder.decode(torch.cat(proposals), deltas.float())
            out, start = [], 0
            for props in proposals:
                p, bx = probs[start:start + len(props)], boxes[start:start + len(props)]
                start += len(props)
                roi, cls = (p > self.score_threshold).nonzero(as_tuple=True)
                cand_scores = p[roi, cls]
                if len(cand_scores) > self.pre_nms_top_k:
                    best = cand_scores.topk(self.pre_nms_top_k).indices
                    roi, cls, cand_scores = roi[best], cls[best], cand_scores[best]
                # The box deltas are class-agnostic: a RoI scored above the threshold in several classes is one box.
                keep = rotated_multiclass_nms(bx, roi, cand_scores, cls, self.nms_threshold)[:self.max_detections]
                out.append({"boxes": bx[roi[keep]], "scores": cand_scores[keep], "labels": cls[keep]})
        return out

    def trunk(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """What runs on the whole image: the pyramid P2..P6 and, per level, the RPN's objectness and deltas."""
        with self.stage("backbone", images.device):
            features = self.backbone(images)
        with self.stage("fpn", images.device):
            pyramid = self.fpn(features)
        with self.stage("rpn head", images.device):
            logits, deltas = self._rpn(pyramid)
        return pyramid, logits, deltas

    @torch.no_grad()
    def detect_from(self, pyramid: list[torch.Tensor], logits: list[torch.Tensor], deltas: list[torch.Tensor],
                    box_head=None) -> list[dict]:
        """Detections from the trunk's outputs: proposals decoded and filtered, rotated RoI Align, the box head
        (``box_head``: what runs it, by default :meth:`box_head`; an exported graph on another runtime), and the
        class-wise rotated NMS."""
        with self.stage("proposals", pyramid[0].device):
            anchors = self.anchors([p.shape[-2:] for p in pyramid], pyramid[0].device)
            proposals = self._proposals(logits, deltas, anchors, self.test_proposals)
        return self._detect(pyramid, proposals, box_head)

    def forward(self, images: torch.Tensor, targets: Sequence[dict] | None = None):
        pyramid, logits, deltas = self.trunk(images)
        if not self.training:
            return self.detect_from(pyramid, logits, deltas)
        if targets is None:
            raise ConfigError("targets", "OrientedRCNN in train mode needs targets (boxes and labels per image)")
        anchors = self.anchors([p.shape[-2:] for p in pyramid], images.device)
        rpn_cls, rpn_reg = self._rpn_loss(logits, deltas, anchors, targets)
        proposals = self._proposals([lg.detach() for lg in logits], [d.detach() for d in deltas], anchors,
                                    self.rpn_proposals)
        roi_cls, roi_reg = self._roi_loss(pyramid, proposals, targets)
        return {"rpn_cls": rpn_cls, "rpn_reg": rpn_reg, "roi_cls": roi_cls, "roi_reg": roi_reg}


class StagesOnRuntime:
    """An :class:`OrientedRCNN` whose two network stages, :meth:`~OrientedRCNN.trunk` (its outputs flattened:
    pyramid, objectness, deltas, a tensor per level each) and :meth:`~OrientedRCNN.box_head`, run elsewhere (their
    ONNX graphs on onnxruntime); the decoding, RoI Align and NMS between and after them stay ``model``'s."""

    def __init__(self, model: OrientedRCNN, trunk, box_head):
        self.model, self.trunk, self.box_head = model, trunk, box_head

    def _box_head(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(roi_features) == 0:
            return roi_features.new_zeros(0, self.model.num_classes + 1), roi_features.new_zeros(0, 5)
        return self.box_head(roi_features)

    def __call__(self, images: torch.Tensor) -> list[dict]:
        with self.model.stage("trunk (runtime)", images.device):
            outputs = list(self.trunk(images))
        levels = len(self.model.strides)
        if len(outputs) != 3 * levels:
            raise ValueError(f"the trunk gave {len(outputs)} outputs; an Oriented R-CNN trunk gives {3 * levels}")
        return self.model.detect_from(outputs[:levels], outputs[levels:2 * levels], outputs[2 * levels:],
                                      box_head=self._box_head)
