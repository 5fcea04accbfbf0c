"""Change detection networks over any backbone of our registry or timm: BIT and a siamese difference U-Net.

Both take the two dates ``(B, C, H, W)`` of a co-registered pair and return change logits
``(B, num_classes, H, W)`` (class 1 = change). The backbone is shared by the two dates (siamese) and
runs once on both stacked along the batch, so that its batch norms see both dates alike.

BIT (Chen, Qi & Shi, "Remote Sensing Image Change Detection with Transformers", TGRS 2021), as in the
authors' best configuration (``base_transformer_pos_s4_dd8``) on top of the backbone's stride-16 map as
the LeMeViT paper uses it:

- the stride-16 map is upsampled ×2 (nearest) and projected by a 3×3 convolution to ``dim = 32`` channels;
- a semantic tokenizer: a 1×1 convolution (no bias) gives ``token_len = 4`` attention maps, each
  softmax-normalised over the pixels; the tokens are the attention-weighted sums of the pixel features;
- a learned positional embedding on the 2 × 4 tokens (one per date and token), then a pre-norm
  transformer encoder (depth 1) over the tokens of both dates;
- a pre-norm transformer decoder (depth 8) per date: the pixels are queries and that date's tokens the
  keys and values (one LayerNorm normalises both);
- attention: 8 heads of width 64 (inner width 512 for a model width of 32), no qkv bias, logits scaled
  by ``dim ** -0.5`` (BIT's choice: the model width, not the head width); MLPs ``32 → 64 → 32`` with GELU;
- ``|f1 − f2|`` upsampled bilinearly to the input size, then conv3×3 (no bias) → BN → ReLU → conv3×3.

The convolutions after the difference pad by replicating the border instead of with zeros: a constant
difference map (identical dates give exactly zero) then gives the same answer at every pixel.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lemevit.errors import ConfigError
from lemevit.models.factory import create_dense_encoder

__all__ = ["BIT", "CHANGE_HEADS", "SemanticTokenizer", "SiamUNet", "StackedPair", "create_change_model"]

CHANGE_HEADS = ("bit", "siamunet")


def _conv_bn_relu(in_chs: int, out_chs: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chs, out_chs, 3, padding=1, padding_mode="replicate", bias=False),
            nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class SemanticTokenizer(nn.Module):
    """``(B, C, H, W)`` → ``(B, token_len, C)``: each token is a softmax-over-pixels weighted sum of the map."""

    def __init__(self, dim: int, token_len: int):
        super().__init__()
        self.attention = nn.Conv2d(dim, token_len, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.attention(x).flatten(2).softmax(dim=-1)  # (B, L, HW)
        return weights @ x.flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    """Multi-head attention of ``queries`` on ``memory`` (self-attention when both are the same)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, _ = queries.shape
        q = self.to_q(queries).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(memory).view(b, memory.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TokenTransformerLayer(nn.Module):
    """Pre-norm attention and MLP. Without ``memory`` the tokens attend to each other (BIT's encoder);
    with it they read ``memory``, normalised by the same LayerNorm (BIT's decoder: pixels read the tokens
    of their date)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.attn(normed, normed if memory is None else self.norm1(memory))
        return x + self.mlp(self.norm2(x))


class BIT(nn.Module):
    """Bitemporal image transformer on the stride-16 map of a shared backbone (see the module docstring).

    Args:
        backbone: any model of our registry or timm with a stride-16 feature map.
        in_chans: bands of each date's image.
        num_classes: 2 (no change, change).
        checkpoint: backbone weights (ours or the published layout), loaded into the backbone only.
        token_len, dim, enc_depth, dec_depth, heads, dim_head, mlp_dim: BIT's settings (defaults: its best).
        feature_stride: which backbone map to tokenize (16 as in the LeMeViT paper).
    """

    def __init__(self, backbone: str = "lemevit_tiny", in_chans: int = 3, num_classes: int = 2,
                 checkpoint: str | Path | dict | None = None, drop_path_rate: float = 0.0, token_len: int = 4,
                 dim: int = 32, enc_depth: int = 1, dec_depth: int = 8, heads: int = 8, dim_head: int = 64,
                 mlp_dim: int = 64, feature_stride: int = 16):
        super().__init__()
        self.encoder = create_dense_encoder(backbone, in_chans, strides=(feature_stride,), checkpoint=checkpoint,
                                            drop_path_rate=drop_path_rate)
        channels = self.encoder.feature_info.channels()[0]
        self.project = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(channels, dim, kernel_size=3, padding=1))
        self.tokenizer = SemanticTokenizer(dim, token_len)
        self.pos_embed = nn.Parameter(torch.randn(1, 2 * token_len, dim))
        self.token_encoder = nn.ModuleList(
            TokenTransformerLayer(dim, heads, dim_head, mlp_dim) for _ in range(enc_depth))
        self.token_decoder = nn.ModuleList(
            TokenTransformerLayer(dim, heads, dim_head, mlp_dim) for _ in range(dec_depth))
        self.classifier = nn.Sequential(*_conv_bn_relu(dim, dim),
                                        nn.Conv2d(dim, num_classes, 3, padding=1, padding_mode="replicate"))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        size = a.shape[-2:]
        x = self.project(self.encoder(torch.cat([a, b]))[0])  # (2B, dim, h, w): date A, then date B
        h, w = x.shape[-2:]
        tokens = torch.cat(self.tokenizer(x).chunk(2), dim=1) + self.pos_embed  # (B, 2L, dim)
        for layer in self.token_encoder:
            tokens = layer(tokens)
        tokens = torch.cat(tokens.chunk(2, dim=1))  # (2B, L, dim): each date's own tokens
        pixels = x.flatten(2).transpose(1, 2)
        for layer in self.token_decoder:
            pixels = layer(pixels, tokens)
        first, second = pixels.chunk(2)
        diff = (first - second).abs().transpose(1, 2).reshape(-1, x.shape[1], h, w)
        return self.classifier(F.interpolate(diff, size=size, mode="bilinear", align_corners=False))


class SiamUNet(nn.Module):
    """Siamese difference U-Net (in the spirit of Daudt et al.'s FC-Siam-diff): the backbone's maps of
    both dates, their absolute differences as the skips of a U-Net decoder, logits upsampled to the input.

    Args:
        backbone: any model of our registry or timm with maps at strides 4, 8, 16 and 32.
        decoder_channels: width of every decoder stage.
    """

    def __init__(self, backbone: str = "lemevit_tiny", in_chans: int = 3, num_classes: int = 2,
                 checkpoint: str | Path | dict | None = None, drop_path_rate: float = 0.0, decoder_channels: int = 64):
        super().__init__()
        self.encoder = create_dense_encoder(backbone, in_chans, checkpoint=checkpoint, drop_path_rate=drop_path_rate)
        channels = self.encoder.feature_info.channels()
        deepest, *skips = channels[::-1]
        self.bottom = nn.Sequential(*_conv_bn_relu(deepest, decoder_channels))
        self.up_blocks = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(decoder_channels + c, decoder_channels),
                          *_conv_bn_relu(decoder_channels, decoder_channels))
            for c in skips)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 3, padding=1, padding_mode="replicate")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        size = a.shape[-2:]
        diffs = [(f1 - f2).abs() for f1, f2 in (f.chunk(2) for f in self.encoder(torch.cat([a, b])))]
        x = self.bottom(diffs[-1])
        for block, skip in zip(self.up_blocks, diffs[-2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


class StackedPair(nn.Module):
    """A change network seen as a one-input model of the two dates stacked along the bands, ``(B, 2C, H, W)``,
    so that code written for single images (sliding windows) predicts pairs."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(*x.chunk(2, dim=1))


def create_change_model(head: str, backbone: str = "lemevit_tiny", in_chans: int = 3, num_classes: int = 2,
                        checkpoint: str | Path | dict | None = None, drop_path_rate: float = 0.0,
                        **kwargs) -> nn.Module:
    """A change-detection network by head name (``"bit"`` or ``"siamunet"``) over ``backbone``.

    ``checkpoint`` holds backbone weights (e.g. an ImageNet or scene-recognition checkpoint); extra
    keyword arguments go to the head (:class:`BIT` or :class:`SiamUNet`).
    """
    heads = {"bit": BIT, "siamunet": SiamUNet}
    if head not in heads:
        raise ConfigError("head", f"must be one of {', '.join(CHANGE_HEADS)}; got {head!r}")
    return heads[head](backbone, in_chans=in_chans, num_classes=num_classes, checkpoint=checkpoint,
                       drop_path_rate=drop_path_rate, **kwargs)
