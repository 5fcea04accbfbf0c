"""Segmentation networks: UperNet, SegFormer and Semantic FPN heads over our backbones and timm encoders."""
from __future__ import annotations

import pytest
import torch

from lemevit.config.optimization import nested_no_weight_decay
from lemevit.errors import ConfigError
from lemevit.models import create_dense_encoder
from lemevit.models.segmentation import SegmentationModel


@pytest.mark.parametrize(("backbone", "head"), [("lemevit_tiny", "upernet"), ("lvt", "segformer"),
                                                ("resnet10t", "upernet"), ("convnext_atto", "segformer"),
                                                ("resnet10t", "fpn")])
def test_logits_come_at_input_resolution_with_aux_logits_in_training(backbone, head):
    torch.manual_seed(0)
    model = SegmentationModel(backbone, head, num_classes=5, in_chans=4, decoder_channels=32)
    x = torch.randn(2, 4, 72, 40)  # not a multiple of 32
    model.train()
    out = model(x)
    if head == "upernet":  # the published UperNet trains with the auxiliary FCN head
        logits, aux = out
        assert aux.shape == (2, 5, 72, 40)
    else:
        logits = out
    assert logits.shape == (2, 5, 72, 40)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    stem = next(model.encoder.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5, 72, 40)


def test_the_auxiliary_head_reads_the_stride_16_map():
    model = SegmentationModel("lemevit_tiny", "upernet", num_classes=6, decoder_channels=32)
    assert model.encoder.feature_info.reduction() == [4, 8, 16, 32]
    assert model.aux_head.conv[0].in_channels == model.encoder.feature_info.channels()[2] == 192
    assert SegmentationModel("lemevit_tiny", "upernet", num_classes=6, aux_head=False).aux_head is None
    assert model.decoder.psp.blocks[0][1][0].out_channels == 32


def test_the_dense_encoder_takes_the_deepest_map_of_each_stride_and_refuses_missing_strides():
    # resnet18 also has a stride-2 map first
    assert create_dense_encoder("resnet18").feature_info.out_indices == (1, 2, 3, 4)
    assert create_dense_encoder("lemevit_tiny").feature_info.reduction() == [4, 8, 16, 32]
    assert create_dense_encoder("lemevit_tiny", strides=(16,)).feature_info.reduction() == [16]
    with pytest.raises(ConfigError, match=r"model: vit_tiny_patch16_224 has feature maps at strides \[16, 16"):
        create_dense_encoder("vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="model: unknown model 'no_such_net'"):
        create_dense_encoder("no_such_net")
    with pytest.raises(ConfigError, match="head: unknown head 'fcn'"):
        SegmentationModel("resnet10t", "fcn")


def test_upernet_trains_on_a_batch_of_one():
    # UperNet's global pooling branch sees one value per channel: batch norm uses its running statistics there.
    model = SegmentationModel("resnet10t", "upernet", num_classes=3, decoder_channels=16).train()
    logits, aux = model(torch.randn(1, 3, 64, 64))
    (logits.mean() + aux.mean()).backward()
    assert logits.shape == (1, 3, 64, 64)


def test_meta_tokens_are_exempt_from_weight_decay():
    model = SegmentationModel("lemevit_tiny", "segformer", num_classes=3, decoder_channels=16)
    names = dict(model.named_parameters())
    exempt = nested_no_weight_decay(model)
    assert "encoder.model.meta_tokens" in exempt and all(n in names for n in exempt)
