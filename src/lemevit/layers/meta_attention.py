"""Attention between image tokens and learnable meta tokens (LeMeViT).

Image tokens are ``(B, N, C)``, meta tokens ``(B, M, C)`` with ``M << N``. Every product goes through
``F.scaled_dot_product_attention`` so that fused kernels are used where the device has them. Setting
``capture_attention = True`` on a module makes it also keep the attention probabilities of its last call
(explicitly computed, so slower), which is how the meta-token attention maps of the paper's Figure 4
are drawn.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lemevit.ops.export import is_exporting

__all__ = ["MetaCrossAttention", "DualCrossAttention", "TokenSelfAttention", "attend"]


def _heads(t: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """(B, L, parts*C) -> ``parts`` views of shape (B, heads, L, C // heads), without copying.

    Split first, then transpose each part: the attention kernel returns its gradients in the (B, L, heads, d)
    layout, so in backward each part's gradient is a plain (B, L, C) view and one concatenation assembles the
    gradient of ``t``. (Unbinding a permuted view instead costs a stack and a strided clone, two passes.)
    """
    return tuple(part.unflatten(-1, (num_heads, -1)).transpose(1, 2) for part in t.chunk(parts, dim=-1))


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads*d)."""
    return t.transpose(1, 2).flatten(2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    dropout_p: float,
    owner: nn.Module,
    capture_as: str = "attention",
) -> torch.Tensor:
    """Scaled dot-product attention; if ``owner.capture_attention`` is set, the probabilities
    (B, heads, Lq, Lk) are stored on ``owner`` under ``capture_as`` (detached)."""
    if owner.capture_attention:
        probs = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
        setattr(owner, capture_as, probs.detach())
        return F.dropout(probs, dropout_p, owner.training) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p if owner.training else 0.0, scale=scale)


class _Capturable(nn.Module):
    capture_attention: bool = False


class MetaCrossAttention(_Capturable):
    """Meta tokens (queries) read from image tokens (keys/values): how LeMeViT's first stage
    initialises its meta tokens. Scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        (q,) = _heads(self.q(c), 1, self.num_heads)
        k, v = _heads(self.kv(x), 2, self.num_heads)
        c = attend(q, k, v, self.scale, self.attn_drop, self, "meta_to_image")
        return self.proj_drop(self.proj(_merge_heads(c)))


class DualCrossAttention(_Capturable):
    """Dual Cross-Attention: image queries attend to meta keys/values and meta queries attend to
    image keys/values, each stream with its own qkv and output projection. Cost O(N*M).

    The scales are the published ones: ``dim`` is the full channel width (not the head width), and the
    image branch is sharpened by log_N(M) so that its softmax over only M keys keeps the entropy it
    would have over N keys.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim ** -0.5
        self.qkv_img = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.qkv_meta = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj_img = nn.Linear(dim, dim)
        self.proj_meta = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, M = x.shape[1], c.shape[1]
        q_img, k_img, v_img = _heads(self.qkv_img(x), 3, self.num_heads)
        q_meta, k_meta, v_meta = _heads(self.qkv_meta(c), 3, self.num_heads)
        # log_N(M) is undefined for a single image token (inputs under 16 px); the published code
        # divides by zero there, we use N = 2 instead.
        if is_exporting():
            # A traced graph would keep log_N(M) of the export size as a constant: compute it in the graph from
            # the token counts so that the exported model is right at every input size.
            n = torch.ones_like(x[0, :, 0]).sum().clamp(min=2)
            m = torch.ones_like(c[0, :, 0]).sum()
            q_img = q_img * (m.log() / n.log())
            scale_img = self.scale
        else:
            scale_img = math.log(M) / math.log(max(N, 2)) * self.scale
        x = attend(q_img, k_meta, v_meta, scale_img, self.attn_drop, self, "image_to_meta")
        c = attend(q_meta, k_img, v_img, self.scale, self.attn_drop, self, "meta_to_image")
        return (self.proj_drop(self.proj_img(_merge_heads(x))),
                self.proj_drop(self.proj_meta(_merge_heads(c))))


class TokenSelfAttention(_Capturable):
    """Multi-head self-attention over one token set; LeMeViT applies it with the same weights to the
    image tokens and to the meta tokens separately. Scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _heads(self.qkv(x), 3, self.num_heads)
        x = attend(q, k, v, self.scale, self.attn_drop, self)
        return self.proj_drop(self.proj(_merge_heads(x)))
