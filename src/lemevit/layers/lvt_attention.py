"""Attention of the Lite Vision Transformer (LVT, Yang et al., CVPR 2022).

* :class:`ConvolutionalSelfAttention` (CSA): 3x3 windows at stride 2 whose 9x9 mixing weights are predicted
  from a 2x2 average pool of the input; values get one d x d matrix per kernel position; overlapping windows
  are summed back (fold). All windows are processed at once (unfold / batched matmul / fold).
* :class:`RecursiveAtrousSelfAttention` (RASA): softmax attention whose query is refined by one depthwise 3x3
  kernel applied at several dilation rates; the same weights are applied recursively.
* :class:`ClassAttention`: a class token reads all tokens (the classification model's post blocks).

Maps are channels-last ``(B, H, W, C)``; the softmax attentions go through
``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lemevit.layers.format import nchw, nhwc
from lemevit.ops.export import fold as export_fold
from lemevit.ops.export import is_exporting

__all__ = ["AtrousDepthwiseConv", "ClassAttention", "ConvolutionalSelfAttention", "RecursiveAtrousSelfAttention"]


class ConvolutionalSelfAttention(nn.Module):
    """CSA on ``(B, H, W, C)`` maps.

    For every ``kernel_size`` window (stride ``stride``, padding ``kernel_size // 2``) and head, a
    ``k² x k²`` softmax matrix (scale head_dim^-0.5) is predicted by ``attn`` from the average-pooled input
    (pool ``stride``, ceil mode, so there is one pooled pixel per window). ``v_weight[p]`` projects the pixel
    at kernel position ``p`` of a window; the mixed windows are folded back (overlaps add) and projected.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, stride: int = 2, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.stride = stride
        self.scale = (dim // num_heads) ** -0.5
        kk = kernel_size * kernel_size
        self.attn = nn.Linear(dim, kk * kk * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        # One (out, in) matrix per kernel position: the published grouped 1x1 conv with k*k groups, no bias.
        self.v_weight = nn.Parameter(torch.empty(kk, dim, dim))
        nn.init.normal_(self.v_weight, std=math.sqrt(2.0 / (kk * dim)))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        k, kk, heads = self.kernel_size, self.kernel_size ** 2, self.num_heads
        img = nchw(x)
        pooled = F.avg_pool2d(img, self.stride, self.stride, ceil_mode=True)
        L = pooled.shape[-2] * pooled.shape[-1]
        attn = self.attn(nhwc(pooled)).reshape(B, L, heads, kk, kk).transpose(1, 2)
        attn = self.attn_drop((attn * self.scale).softmax(dim=-1))  # (B, heads, L, kk, kk)

        cols = F.unfold(img, k, padding=k // 2, stride=self.stride)  # (B, C*kk, L), channel-major
        cols = cols.view(B, C, kk, L).permute(2, 0, 3, 1).reshape(kk, B * L, C)
        v = torch.bmm(cols, self.v_weight.transpose(1, 2))  # (kk, B*L, C)
        v = v.view(kk, B, L, heads, C // heads).permute(1, 3, 2, 0, 4)  # (B, heads, L, kk, hd)

        out = (attn @ v).permute(0, 1, 4, 3, 2).reshape(B, C * kk, L)
        fold = export_fold if is_exporting() else F.fold
        out = fold(out, (H, W), k, padding=k // 2, stride=self.stride)
        return self.proj_drop(self.proj(nhwc(out)))


class AtrousDepthwiseConv(nn.Module):
    """One depthwise 3x3 kernel applied at each of ``rates`` (dilation = padding), each result through SiLU,
    summed: RASA's multi-scale query."""

    def __init__(self, dim: int, rates: Sequence[int] = (1, 3, 5), bias: bool = False):
        super().__init__()
        self.rates = tuple(rates)
        self.weight = nn.Parameter(torch.empty(dim, 1, 3, 3))
        nn.init.kaiming_uniform_(self.weight)
        if bias:
            self.bias = nn.Parameter(torch.empty(dim))
            bound = 1 / 3  # 1 / sqrt(fan_in) of a depthwise 3x3 kernel
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[1]
        return sum(F.silu(F.conv2d(x, self.weight, self.bias, padding=r, dilation=r, groups=groups))
                   for r in self.rates)


class RecursiveAtrousSelfAttention(nn.Module):
    """RASA on ``(B, H, W, C)`` maps.

    One attention step SA: q = AtrousDepthwiseConv(Linear(x)); keys and values from ``x`` after PVT-style
    spatial reduction (conv k=s=``sr_ratio`` then LayerNorm) when ``sr_ratio > 1``; softmax attention with
    scale head_dim^-0.5; output projection. With ``recursions`` r > 1 the same weights are reused:
    ``y = SiLU(SA(x))``, then r - 1 times ``x = y + x; y = SiLU(SA(x))``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, atrous_rates: Sequence[int] = (1, 3, 5),
                 recursions: int = 2, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if recursions < 1:
            raise ValueError(f"recursions must be >= 1, got {recursions}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.recursions = recursions
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.q_conv = AtrousDepthwiseConv(dim, atrous_rates, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = self.norm = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        heads = self.num_heads
        q = nhwc(self.q_conv(nchw(self.q(x)))).reshape(B, H * W, heads, C // heads).transpose(1, 2)
        if self.sr is not None:
            x = self.norm(nhwc(self.sr(nchw(x))))
        k, v = self.kv(x).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H, W, C)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._attend(x)
        if self.recursions == 1:
            return y
        y = F.silu(y)
        for _ in range(self.recursions - 1):
            x = y + x
            y = F.silu(self._attend(x))
        return y


class ClassAttention(nn.Module):
    """The class token (first token) queries all tokens, itself included: ``(B, 1 + N, C) -> (B, 1, C)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        heads = self.num_heads
        q = self.q(x[:, :1]).reshape(B, 1, heads, C // heads).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, C)))
