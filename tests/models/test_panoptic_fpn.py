"""Panoptic FPN: the fusion heuristic on a hand-made case, the targets, a training step and an inference."""
from __future__ import annotations

import pytest
import torch

from lemevit.errors import ConfigError
from lemevit.labels import IGNORE_INDEX
from lemevit.models.panoptic_fpn import (
    LVT_HEADS,
    PanopticFPN,
    PanopticHeads,
    default_fpn_channels,
    default_heads,
    panoptic_fusion,
)


def box_mask(top: int, left: int, bottom: int, right: int, size: int = 10) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_fusion_takes_instances_by_score_then_large_stuff_regions():
    masks = torch.stack([box_mask(0, 0, 4, 4),  # 16 px, the best
                         box_mask(1, 1, 4, 4),  # 9 px, all taken: dropped
                         box_mask(2, 3, 6, 7),  # 16 px, 2 taken (1/8): keeps its 14 free px
                         box_mask(8, 8, 10, 10)])  # scored under the threshold
    scores, classes = torch.tensor([0.9, 0.8, 0.7, 0.3]), torch.tensor([1, 1, 4, 1])
    semantic = torch.zeros(10, 10, dtype=torch.long)
    semantic[:, 6:] = 1  # stuff class 0 (road), 40 px of which 4 are under the third instance
    semantic[9, :6] = 2  # stuff class 3 (tree), 6 px: under the area limit
    ids, segments = panoptic_fusion(scores, classes, masks, semantic, stuff_classes=[0, 3], stuff_area=10)
    assert [(s["id"], s["class"], s["isthing"]) for s in segments] == [(1, 1, True), (2, 4, True), (3, 0, False)]
    assert segments[0]["score"] == pytest.approx(0.9) and segments[2]["score"] is None
    assert int((ids == 1).sum()) == 16 and int((ids == 2).sum()) == 14 and int((ids == 3).sum()) == 36
    assert ids[9, 0] == 0 and ids[5, 0] == 0  # the small tree region and the things label without an instance


def test_targets_split_things_into_instances_and_label_stuff_for_the_semantic_branch():
    model = PanopticFPN("resnet10t", num_classes=4, thing_classes=[1, 3], fpn_channels=32)
    ids = torch.tensor([[5, 5, 7, 0],
                        [5, 8, 7, -9],
                        [6, 6, 6, -9]])  # -9: a crowd
    class_of = {5: 1, 7: 1, 8: 3, -9: 3, 6: 2, 0: IGNORE_INDEX}
    targets = model.targets(ids, ids.clone().apply_(class_of.get))
    assert targets["labels"].tolist() == [1, 1, 2]  # things 5, 7, 8 (the crowd 9 left out), labels 1..T
    assert targets["boxes"].tolist() == [[0, 0, 2, 2], [2, 0, 3, 2], [1, 1, 2, 2]]
    assert targets["masks"].shape == (3, 3, 4) and targets["masks"][0].sum() == 3
    assert targets["semantic"].tolist() == [[0, 0, 0, IGNORE_INDEX], [0, 0, 0, 0], [2, 2, 2, 0]]


def test_lvt_gets_lvts_96_channel_pyramid():
    model = PanopticFPN("lvt", num_classes=6, thing_classes=[1, 4])
    assert model.fpn.inner_blocks[0][0].out_channels == 96
    assert model.semantic_classifier.out_channels == 1 + 4 and model.stuff_classes == [0, 2, 3, 5]
    assert default_fpn_channels("lvt_backbone") == 96
    assert PanopticFPN("resnet10t", 3, [0]).fpn.inner_blocks[0][0].out_channels == 256
    with pytest.raises(ConfigError, match=r"things: must be one or more class indices in 0..2, got \[3\]"):
        PanopticFPN("resnet10t", 3, [3])


def test_lvt_gets_lvts_narrower_heads_and_other_backbones_the_papers():
    model = PanopticFPN("lvt", num_classes=6, thing_classes=[1, 4])
    assert model.heads == LVT_HEADS == default_heads("lvt_backbone")
    assert model.roi_heads.box_head.fc6.out_features == model.roi_heads.box_head.fc7.out_features == 160
    assert [m.out_channels for m in model.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)] == [96] * 4
    norms = [m for m in model.semantic_head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {(m.num_groups, m.num_channels) for m in norms} == {(12, 48)}
    other = PanopticFPN("resnet10t", 3, [0])
    assert other.heads == PanopticHeads(1024, 2, 256, 4, 128, 32)  # Detectron2's, as before they were settings
    assert sorted(other.roi_heads.box_head.state_dict()) == ["fc6.bias", "fc6.weight", "fc7.bias", "fc7.weight"]
    given = PanopticFPN("lvt", 3, [0], box_channels=64, box_layers=3, mask_layers=2, semantic_channels=24)
    assert given.heads == PanopticHeads(64, 3, 96, 2, 24, 12)
    assert given.roi_heads.box_head.fc8.in_features == 64
    with pytest.raises(ConfigError, match=r"semantic_channels: must be a multiple of semantic_groups \(12"):
        PanopticFPN("lvt", 3, [0], semantic_channels=32)
    with pytest.raises(ConfigError, match="box_layers: must be a positive integer, got 0"):
        default_heads("resnet10t", box_layers=0)


def test_lvt_panoptic_fpn_on_coco_has_the_published_5_4_m_parameters(capsys):
    """LVT's README and paper: Panoptic FPN + LVT, 5.4 M parameters on COCO (80 things, 53 stuff).

    The count is the whole detector, as the source's detection/tools/analysis_tools/get_flops.py counts it (mmcv's
    get_model_complexity_info: every trainable parameter): backbone (3,430,180, per-stage
    LayerNorms included), pyramid (384,768), RPN (84,495), box head and predictor (843,765), mask head and predictor
    (376,977), semantic branch and its 54-class classifier (231,414). The source's released mmdetection code
    differs by two conventions, both under 0.1 M: its detection backbone's per-stage norms are ``nn.Identity``
    (1,088 fewer; the classification code's dense backbone, which lemevit follows, has them), and its box regression
    and mask logits have no background class, which torchvision's predictors have (644 + 97 fewer): 5,349,770 in
    all, which get_flops prints with two decimals as 5.35 M, 5.4 M in the paper (5.3 M if rounded once).
    """
    model = PanopticFPN("lvt_backbone", num_classes=133, thing_classes=range(80))
    count = sum(p.numel() for p in model.parameters())
    with capsys.disabled():
        print(f"\nPanoptic FPN + LVT on COCO: {count:,} parameters")
    assert round(count / 1e6, 1) == 5.4
    assert count == 5_351_599
    assert count - 1_088 - 644 - 97 == 5_349_770  # the source's own code


def test_a_training_step_and_an_inference():
    torch.manual_seed(0)
    model = PanopticFPN("resnet10t", num_classes=3, thing_classes=[1], fpn_channels=32, semantic_channels=32)
    ids = torch.ones(64, 64, dtype=torch.long)
    ids[8:30, 10:40], ids[40:60, 40:60], ids[:2] = 2, 3, 0
    classes = torch.where(ids == 1, 0, torch.where(ids == 0, IGNORE_INDEX, 1))
    empty = torch.zeros(64, 64, dtype=torch.long)  # an image without labels (and so without objects)
    targets = [model.targets(ids, classes), model.targets(empty, torch.full_like(empty, IGNORE_INDEX))]
    model.train()
    losses = model(torch.randn(2, 3, 64, 64), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                           "loss_semantic"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for part in (model.encoder, model.fpn, model.rpn, model.roi_heads.mask_head, model.semantic_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.eval()
    with torch.no_grad():
        (output,) = model(torch.randn(1, 3, 64, 64))
    instances = output["instances"]
    assert output["semantic"].shape == (3, 64, 64)  # things, then the two stuff classes
    assert instances["masks"].shape[1:] == (64, 64) and set(instances["classes"].tolist()) <= {1}
    panoptic, fused = model.panoptic(output, score_threshold=0.0, stuff_area=1)
    assert panoptic.shape == (64, 64) and {s["class"] for s in fused} <= {0, 1, 2}
    assert set(torch.unique(panoptic).tolist()) <= {0} | {s["id"] for s in fused}
