"""Semantic segmentation networks: UperNet, the SegFormer MLP decoder or Semantic FPN over the stride-4/8/16/32
feature maps of any of our backbones or of any timm encoder.

The decoders are segmentation_models_pytorch's (``UPerNetDecoder``: pyramid pooling on the stride-32 map
plus an FPN, fused at stride 4; ``SegformerDecoder``: one linear layer per level, fused by a 1x1 conv); Semantic
FPN, the head PVT and VVT used on ADE20K, is Panoptic FPN's semantic branch (:class:`~lemevit.models.panoptic_fpn.
SemanticFPN`: a 256-channel pyramid, each level brought to stride 4 by conv-GroupNorm-ReLU and upsampling, summed).
The encoder is :func:`~lemevit.models.factory.create_dense_encoder`'s. What smp lacks is written here: the
classifier (dropout 0.1 and a 1x1 conv, as mmsegmentation's heads), and the auxiliary FCN head on the
stride-16 map that the published UperNet configuration trains with (one 3x3 conv-BN-ReLU of 256 channels;
loss weight 0.4, applied by the task).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.modules import Conv2dReLU
from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

from lemevit.errors import ConfigError
from lemevit.layers.norm import allow_single_value_batch_norm
from lemevit.models.factory import create_dense_encoder
from lemevit.models.panoptic_fpn import SemanticFPN

__all__ = ["HEADS", "FCNHead", "SegmentationModel"]

#: Decoder heads and their default channel widths (mmsegmentation's UperNet: 512; SegFormer/LVT: 256; Semantic FPN:
#: the pyramid's 256, its branch 128).
HEADS = {"upernet": 512, "segformer": 256, "fpn": 256}
AUX_CHANNELS = 256


class FCNHead(nn.Module):
    """mmsegmentation's auxiliary FCN head: 3x3 conv-BN-ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = AUX_CHANNELS, dropout: float = 0.1):
        super().__init__()
        self.conv = Conv2dReLU(in_channels, channels, kernel_size=3, padding=1, use_norm="batchnorm")
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class SegmentationModel(nn.Module):
    """A backbone's stride-4/8/16/32 maps, a decoder head and a classifier; logits at input resolution.

    Args:
        backbone: any model name of our registry or timm that has features at strides 4, 8, 16 and 32.
        head: ``"upernet"``, ``"segformer"`` or ``"fpn"``.
        num_classes: number of classes.
        in_chans: input bands.
        decoder_channels: width of the decoder (default 512 for UperNet, 256 for SegFormer and for Semantic FPN's
            pyramid).
        aux_head: add the auxiliary FCN head on the stride-16 map (default: with UperNet, as published).
        drop_path_rate: stochastic depth of the backbone.
        backbone_checkpoint: local weights for the backbone (our layout or the published one).

    ``forward`` returns the logits ``(B, K, H, W)``; in training mode with the auxiliary head it returns
    ``(logits, aux_logits)``, both at input resolution.
    """

    def __init__(self, backbone: str, head: str = "upernet", num_classes: int = 6, in_chans: int = 3,
                 decoder_channels: int | None = None, aux_head: bool | None = None, drop_path_rate: float = 0.0,
                 backbone_checkpoint: str | Path | dict | None = None, dropout: float = 0.1):
        super().__init__()
        if head not in HEADS:
            raise ConfigError("head", f"unknown head {head!r}; the heads are {sorted(HEADS)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError("num_classes", f"must be a positive integer, got {num_classes!r}")
        self.num_classes, self.head_name = num_classes, head
        self.encoder = create_dense_encoder(backbone, in_chans, checkpoint=backbone_checkpoint,
                                            drop_path_rate=drop_path_rate)
        channels = self.encoder.feature_info.channels()
        width = decoder_channels or HEADS[head]
        # smp's decoders take an encoder's maps from stride 1 on; strides 1 and 2 are not used by UperNet, and
        # SegFormer reads only the input's size from stride 1 (a 0-channel stride-2 map marks it as absent).
        decoded_channels = width
        if head == "upernet":
            self.decoder = UPerNetDecoder([in_chans, 0, *channels], encoder_depth=5, decoder_channels=width)
        elif head == "segformer":
            self.decoder = SegformerDecoder([in_chans, 0, *channels], encoder_depth=5, segmentation_channels=width)
        else:
            self.decoder = SemanticFPN(channels, fpn_channels=width)
            decoded_channels = self.decoder.out_channels
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoded_channels, num_classes, kernel_size=1)
        use_aux = head == "upernet" if aux_head is None else aux_head
        self.aux_head = FCNHead(channels[2], num_classes, dropout=dropout) if use_aux else None
        # A batch of one (or one crop per epoch) pools to a single value per channel in UperNet's global branch
        # (and in a convolutional backbone's last stage, for small crops).
        allow_single_value_batch_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        features = list(self.encoder(x))
        decoded = self.decoder(features) if self.head_name == "fpn" else self.decoder([x, x[:, :0], *features])
        logits = F.interpolate(self.classifier(self.dropout(decoded)), size=size, mode="bilinear",
                               align_corners=False)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[2]), size=size, mode="bilinear", align_corners=False)
            return logits, aux
        return logits
