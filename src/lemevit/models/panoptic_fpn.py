"""Panoptic FPN (Kirillov, Girshick, He and Dollár, CVPR 2019) over any backbone with stride-4/8/16/32 features.

One feature pyramid feeds two branches. The instance branch is Mask R-CNN, assembled from torchvision's parts
(``RegionProposalNetwork``, ``RoIHeads`` with ``MaskRCNNHeads``, ``MultiScaleRoIAlign``): it finds the objects of
the thing classes. The semantic branch (:class:`SemanticFPNHead`) labels every pixel with a stuff class or with one
"thing" class standing for all objects. The heuristic of the paper fuses the two into one panoptic map
(:func:`panoptic_fusion`): instances by score, each dropped when more than half of it is already taken, then stuff
regions of the semantic map on the pixels left, each dropped when smaller than an area limit.

The pyramid is torchvision's ``FeaturePyramidNetwork`` on strides 4..32 plus a max-pooled stride 64 for the
proposals. Settings of the boxes, masks and fusion are Detectron2's Panoptic FPN defaults: RPN anchors 32..512 px
on P2..P6, RoI Align 7x7 for boxes and 14x14 for masks; semantic loss weight 0.5. The widths of the pyramid and of
the heads (:class:`PanopticHeads`) are the paper's (Detectron2's) - a 256-channel pyramid, two 1024-unit box
layers, four 256-channel mask convs, a 128-channel semantic branch with 32 GroupNorm groups - except for LVT
(``lvt``, ``lvt_backbone``), whose Panoptic FPN (github.com/Chenglin-Yang/LVT,
``detection/configs/lvt/panoptic_fpn_lvt_fpn_1x_coco.py``) is narrower: a 96-channel pyramid (and RPN conv), two
160-unit box layers, four 96-channel mask convs, a 48-channel semantic branch with 12 groups; with COCO's 80
things and 53 stuff classes it has 5.35 M parameters, the 5.4 M published.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lemevit.errors import ConfigError
from lemevit.labels import IGNORE_INDEX
from lemevit.models.factory import DENSE_STRIDES, create_dense_encoder

__all__ = ["BoxHead", "PanopticFPN", "PanopticHeads", "SemanticFPN", "SemanticFPNHead", "default_fpn_channels",
           "default_heads", "panoptic_fusion"]

#: The pyramid's levels as torchvision's pooling layers name them (strides 4, 8, 16, 32).
_LEVELS = ("0", "1", "2", "3")


def _is_lvt(backbone: str) -> bool:
    return backbone.split(".")[0] in ("lvt", "lvt_backbone")


def default_fpn_channels(backbone: str) -> int:
    """LVT's Panoptic FPN has 96 channels (for ``lvt`` and ``lvt_backbone``); the paper's has 256."""
    return 96 if _is_lvt(backbone) else 256


@dataclass(frozen=True)
class PanopticHeads:
    """Widths of Panoptic FPN's heads; the defaults are the paper's (Detectron2's).

    Attributes:
        box_channels, box_layers: the box head's fully connected layers (mmdetection's ``fc_out_channels`` and
            ``num_shared_fcs``).
        mask_channels, mask_layers: the mask head's 3x3 convs (``conv_out_channels``, ``num_convs``); its
            transposed conv has ``mask_channels`` too.
        semantic_channels, semantic_groups: the semantic branch's width (``inner_channels``) and its GroupNorm
            groups.
    """

    box_channels: int = 1024
    box_layers: int = 2
    mask_channels: int = 256
    mask_layers: int = 4
    semantic_channels: int = 128
    semantic_groups: int = 32

    def check(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(field.name, f"must be a positive integer, got {value!r}")
        if self.semantic_channels % self.semantic_groups:
            raise ConfigError("semantic_channels", f"must be a multiple of semantic_groups ({self.semantic_groups}, "
                                                   f"its GroupNorm's groups), got {self.semantic_channels}")


#: LVT's Panoptic FPN: github.com/Chenglin-Yang/LVT, detection/configs/lvt/panoptic_fpn_lvt_fpn_1x_coco.py (which
#: the 3x config inherits): ``fc_out_channels=160`` of a Shared2FCBBoxHead, FCNMaskHead ``num_convs=4,
#: conv_out_channels=96``, PanopticFPNHead ``inner_channels=48`` with ``GN, num_groups=12``.
LVT_HEADS = PanopticHeads(box_channels=160, box_layers=2, mask_channels=96, mask_layers=4, semantic_channels=48,
                          semantic_groups=12)


def default_heads(backbone: str, **given: int | None) -> PanopticHeads:
    """The head widths of Panoptic FPN over ``backbone``: LVT's for ``lvt`` and ``lvt_backbone``, the paper's
    otherwise; the widths ``given`` (those not None) replace them."""
    heads = replace(LVT_HEADS if _is_lvt(backbone) else PanopticHeads(),
                    **{k: v for k, v in given.items() if v is not None})
    heads.check()
    return heads


class SemanticFPNHead(nn.Module):
    """The semantic branch of Panoptic FPN on pyramid levels of strides 4, 8, 16, 32: each level goes through
    3x3 conv (no bias), GroupNorm (``num_groups`` groups, 32 by default) and ReLU, with a 2x bilinear upsampling
    after each, as many times as it takes to reach stride 4 (once for stride 4, without upsampling); the levels are
    summed. Gives ``channels`` maps at stride 4 (mmdetection's ``PanopticFPNHead`` without its classifier)."""

    def __init__(self, in_channels: int, channels: int = 128, strides: Sequence[int] = DENSE_STRIDES,
                 num_groups: int = 32):
        super().__init__()
        self.out_channels = channels
        self.levels = nn.ModuleList()
        for stride in strides:
            steps = max(1, int(math.log2(stride // strides[0])))
            layers = []
            for k in range(steps):
                layers += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                           nn.GroupNorm(num_groups, channels), nn.ReLU(inplace=True)]
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.levels[0](features[0])
        for level, x in zip(self.levels[1:], features[1:], strict=True):
            y = level(x)
            # Inputs whose side is not a multiple of 32 give levels that upsample to one pixel more or less.
            out = out + (y if y.shape[-2:] == out.shape[-2:] else F.interpolate(y, size=out.shape[-2:],
                                                                                mode="bilinear"))
        return out


class BoxHead(nn.Module):
    """The box head: the flattened RoI features through ``layers`` fully connected layers of ``channels`` units,
    each followed by ReLU (mmdetection's ``Shared2FCBBoxHead`` for two; torchvision's ``TwoMLPHead``, whose
    parameter names ``fc6``, ``fc7``, ... it keeps)."""

    def __init__(self, in_channels: int, channels: int = 1024, layers: int = 2):
        super().__init__()
        self.layers = layers
        for i in range(layers):
            self.add_module(f"fc{6 + i}", nn.Linear(in_channels if i == 0 else channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(start_dim=1)
        for i in range(self.layers):
            x = F.relu(getattr(self, f"fc{6 + i}")(x))
        return x


class SemanticFPN(nn.Module):
    """A feature pyramid and the semantic FPN branch: the ``fpn`` decoder of segmentation (PVT's and VVT's
    "Semantic FPN" on ADE20K). Takes the backbone's four maps, gives ``out_channels`` maps at stride 4."""

    def __init__(self, in_channels: Sequence[int], fpn_channels: int = 256, channels: int = 128):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        self.head = SemanticFPNHead(fpn_channels, channels)
        self.out_channels = channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        pyramid = self.fpn(OrderedDict(zip(_LEVELS, features, strict=True)))
        return self.head(list(pyramid.values()))


def panoptic_fusion(scores: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor],
                    semantic: torch.Tensor, stuff_classes: Sequence[int], overlap_threshold: float = 0.5,
                    score_threshold: float = 0.5, stuff_area: int = 4096,
                    corners: Sequence[tuple[int, int]] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """The panoptic map of one image from its instances and its semantic map (Panoptic FPN's heuristic).

    Args:
        scores, classes: ``(N,)`` score and class index of each instance.
        masks: ``(N, H, W)`` boolean masks of the instances; with ``corners``, N boolean masks of any size, each
            placed with its top-left pixel at the ``(top, left)`` of its corner (a scene's instances cropped to
            their extent, which a scene's worth of full-size masks would not fit in memory).
        semantic: ``(H, W)`` semantic labels: 0 for things, ``s`` for ``stuff_classes[s - 1]``.
        overlap_threshold: an instance more than this fraction of which is already taken is dropped.
        score_threshold: instances scored lower are dropped.
        stuff_area: stuff regions of fewer pixels (on the pixels the instances left) are dropped.

    Returns ``(ids, segments)``: ``(H, W)`` int64 segment ids (0: no segment) and for each id its ``class``, whether
    it ``isthing`` and its ``score`` (None for stuff).
    """
    ids = torch.zeros(semantic.shape, dtype=torch.int64, device=semantic.device)
    segments = []
    for i in torch.argsort(scores, descending=True).tolist():
        if scores[i] < score_threshold:
            break
        mask = masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        top, left = corners[i] if corners is not None else (0, 0)
        under = ids[top:top + mask.shape[0], left:left + mask.shape[1]]  # a view: writing it writes ids
        taken = mask & (under > 0)
        if int(taken.sum()) / area > overlap_threshold:
            continue
        segments.append({"id": len(segments) + 1, "class": int(classes[i]), "isthing": True,
                         "score": float(scores[i])})
        under[mask & ~taken] = len(segments)
    for label in torch.unique(semantic).tolist():
        if label == 0:
            continue
        region = (semantic == label) & (ids == 0)
        if int(region.sum()) < stuff_area:
            continue
        segments.append({"id": len(segments) + 1, "class": int(stuff_classes[label - 1]), "isthing": False,
                         "score": None})
        ids[region] = len(segments)
    return ids, segments


class PanopticFPN(nn.Module):
    """Panoptic FPN over a backbone.

    Args:
        backbone: any model of our registry or timm with features at strides 4, 8, 16 and 32.
        num_classes: number of classes; ``thing_classes`` are the indices of those made of objects, the others are
            stuff.
        in_chans: input bands.
        fpn_channels: width of the pyramid and of the RPN's conv (default :func:`default_fpn_channels`).
        box_channels, box_layers, mask_channels, mask_layers, semantic_channels, semantic_groups: widths of the
            heads (see :class:`PanopticHeads`; default :func:`default_heads`: LVT's for LVT, else the paper's).
        anchor_sizes: the RPN's anchor size on each of P2..P6, in input pixels.
        semantic_weight: weight of the semantic branch's cross-entropy in the loss.
        rpn_proposals: proposals kept per image after the RPN's NMS in training (twice as many before it);
            ``test_proposals`` at inference, before and after it.
        detections: objects per image at most, at inference.
        drop_path_rate, backbone_checkpoint: stochastic depth and local weights of the backbone.

    In training, ``forward(images, targets)`` returns the losses (RPN objectness and boxes, RoI classes, boxes and
    masks, and the weighted semantic cross-entropy); ``targets`` are :meth:`targets` of each image. In evaluation,
    ``forward(images)`` returns per image its ``instances`` (``boxes``, ``scores``, ``classes`` as class indices,
    ``masks`` ``(N, H, W)`` probabilities) and its ``semantic`` logits ``(1 + S, H, W)`` (0: things, then the stuff
    classes in order).
    """

    def __init__(self, backbone: str, num_classes: int, thing_classes: Sequence[int], in_chans: int = 3,
                 fpn_channels: int | None = None, box_channels: int | None = None, box_layers: int | None = None,
                 mask_channels: int | None = None, mask_layers: int | None = None,
                 semantic_channels: int | None = None, semantic_groups: int | None = None,
                 anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512), semantic_weight: float = 0.5,
                 rpn_proposals: int = 1000, test_proposals: int = 1000, detections: int = 100,
                 drop_path_rate: float = 0.0, backbone_checkpoint: str | Path | dict | None = None):
        super().__init__()
        things = sorted(set(thing_classes))
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError("num_classes", f"must be a positive integer, got {num_classes!r}")
        if not things or not all(0 <= t < num_classes for t in things):
            raise ConfigError("things", f"must be one or more class indices in 0..{num_classes - 1}, got "
                                        f"{list(thing_classes)}")
        self.thing_classes = things
        self.stuff_classes = [c for c in range(num_classes) if c not in things]
        self.semantic_weight = semantic_weight
        width = fpn_channels or default_fpn_channels(backbone)
        heads = default_heads(backbone, box_channels=box_channels, box_layers=box_layers,
                              mask_channels=mask_channels, mask_layers=mask_layers,
                              semantic_channels=semantic_channels, semantic_groups=semantic_groups)
        self.heads = heads
        self.encoder = create_dense_encoder(backbone, in_chans, checkpoint=backbone_checkpoint,
                                            drop_path_rate=drop_path_rate)
        self.fpn = FeaturePyramidNetwork(self.encoder.feature_info.channels(), width, extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(width, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": 2 * rpn_proposals, "testing": test_proposals},
            post_nms_top_n={"training": rpn_proposals, "testing": test_proposals}, nms_thresh=0.7)
        num_instance_labels = len(things) + 1  # and the background
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(list(_LEVELS), 7, 2), BoxHead(width * 7 * 7, heads.box_channels, heads.box_layers),
            FastRCNNPredictor(heads.box_channels, num_instance_labels), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05,
            nms_thresh=0.5, detections_per_img=detections, mask_roi_pool=MultiScaleRoIAlign(list(_LEVELS), 14, 2),
            mask_head=MaskRCNNHeads(width, (heads.mask_channels,) * heads.mask_layers, 1),
            mask_predictor=MaskRCNNPredictor(heads.mask_channels, heads.mask_channels, num_instance_labels))
        self.semantic_head = SemanticFPNHead(width, heads.semantic_channels, num_groups=heads.semantic_groups)
        self.semantic_classifier = nn.Conv2d(heads.semantic_channels, 1 + len(self.stuff_classes), 1)

    def targets(self, ids: torch.Tensor, classes: torch.Tensor) -> dict:
        """The training targets of one image from its ``(H, W)`` segment ids (0 void, crowds negative) and each
        pixel's class index (:func:`~lemevit.data.panoptic.segment_labels`): the thing segments, crowds left out, as
        ``boxes``, ``labels`` (1..T) and ``masks``, and the ``semantic`` map (0 on things, 1..S on stuff,
        ``IGNORE_INDEX`` on void)."""
        instance_label = {c: i + 1 for i, c in enumerate(self.thing_classes)}
        stuff_label = {c: i + 1 for i, c in enumerate(self.stuff_classes)}
        semantic = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.int64, device=ids.device)
        boxes, labels, masks = [], [], []
        for segment_id in torch.unique(ids).tolist():
            if segment_id == 0:
                continue
            region = ids == segment_id
            c = int(classes[region][0])
            if c in stuff_label:
                semantic[region] = stuff_label[c]
                continue
            semantic[region] = 0
            if segment_id < 0:
                continue
            rows, cols = torch.nonzero(region, as_tuple=True)
            boxes.append(torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float())
            labels.append(instance_label[c])
            masks.append(region)
        height, width = ids.shape
        return {"boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4, device=ids.device),
                "labels": torch.tensor(labels, dtype=torch.int64, device=ids.device),
                "masks": torch.stack(masks).to(torch.uint8) if masks else
                torch.zeros(0, height, width, dtype=torch.uint8, device=ids.device),
                "semantic": semantic}

    def _semantic(self, pyramid: OrderedDict, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.semantic_classifier(self.semantic_head([pyramid[k] for k in _LEVELS])),
                             size=size, mode="bilinear", align_corners=False)

    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The semantic branch alone: ``(B, 1 + S, H, W)`` logits (0: things, then the stuff classes in order)."""
        pyramid = self.fpn(OrderedDict(zip(_LEVELS, self.encoder(images), strict=True)))
        return self._semantic(pyramid, tuple(images.shape[-2:]))

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        size = tuple(images.shape[-2:])
        pyramid = self.fpn(OrderedDict(zip(_LEVELS, self.encoder(images), strict=True)))
        image_list = ImageList(images, [size] * len(images))
        semantic = self._semantic(pyramid, size)
        if self.training:
            if targets is None:
                raise ValueError("training needs the targets")
            instance_targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
            proposals, rpn_losses = self.rpn(image_list, pyramid, instance_targets)
            _, roi_losses = self.roi_heads(pyramid, proposals, image_list.image_sizes, instance_targets)
            loss = F.cross_entropy(semantic, torch.stack([t["semantic"] for t in targets]), ignore_index=IGNORE_INDEX)
            return {**rpn_losses, **roi_losses, "loss_semantic": self.semantic_weight * loss}
        proposals, _ = self.rpn(image_list, pyramid)
        detections, _ = self.roi_heads(pyramid, proposals, image_list.image_sizes)
        things = torch.tensor(self.thing_classes, device=images.device)
        outputs = []
        for detection, logits in zip(detections, semantic, strict=True):
            masks = paste_masks_in_image(detection["masks"], detection["boxes"], size)[:, 0]
            outputs.append({"instances": {"boxes": detection["boxes"], "scores": detection["scores"],
                                          "classes": things[detection["labels"] - 1], "masks": masks},
                            "semantic": logits})
        return outputs

    def panoptic(self, output: dict, mask_threshold: float = 0.5, **fusion) -> tuple[torch.Tensor, list[dict]]:
        """One image's panoptic map (see :func:`panoptic_fusion`, whose options ``fusion`` passes on) from its
        output in evaluation; segments' ``class`` are class indices."""
        instances = output["instances"]
        return panoptic_fusion(instances["scores"], instances["classes"], instances["masks"] > mask_threshold,
                               output["semantic"].argmax(0), self.stuff_classes, **fusion)
