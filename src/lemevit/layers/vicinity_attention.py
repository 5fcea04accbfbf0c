"""Vicinity attention (VVT, Sun et al., TPAMI 2023): linear attention re-weighted by 2D Manhattan distance.

With φ = ReLU, a token at row r, column c of an H x W map gets the angles a = (π/2)·r/H and b = (π/2)·c/W,
and its query and key are expanded to ``[φ cos a, φ sin a, φ cos b, φ sin b]``, so that
``q'_i · k'_j = φ(q_i)·φ(k_j) · (cos(a_i - a_j) + cos(b_i - b_j))``. Summing ``k'_j v_jᵀ`` over the keys
first keeps the cost linear in the number of tokens: no N x N matrix is ever formed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeaturePreservingGate", "VicinityAttention", "abs_clamp"]


def abs_clamp(t: torch.Tensor, min_mag: float = 1e-4, max_mag: float = 1e4) -> torch.Tensor:
    """Clamp magnitudes to [min_mag, max_mag] keeping the sign; exact zeros stay zero."""
    return t.abs().clamp(min_mag, max_mag) * t.sign()


def _position_factors(H: int, W: int, like: torch.Tensor) -> torch.Tensor:
    """(4, H*W, 1) factors cos a, sin a, cos b, sin b for every token of an H x W map (row-major)."""
    half_pi = math.pi / 2
    a = torch.arange(H, device=like.device, dtype=torch.float32) * half_pi / H
    b = torch.arange(W, device=like.device, dtype=torch.float32) * half_pi / W
    a, b = a[:, None].expand(H, W).reshape(-1), b[None, :].expand(H, W).reshape(-1)
    return torch.stack([a.cos(), a.sin(), b.cos(), b.sin()]).to(like.dtype)[..., None]


def _expand(t: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, heads, N, 4d): ``[t cos a, t sin a, t cos b, t sin b]``."""
    return torch.cat([t * f for f in factors.unbind(0)], dim=-1)


class FeaturePreservingGate(nn.Module):
    """Channel gate from the token mean: ``sigmoid(fc2(ReLU(fc1(mean(x)))))``, no biases."""

    def __init__(self, dim: int, reduction: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // reduction, bias=False)
        self.fc2 = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, H, W, C) -> gate (B, 1, 1, C)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(1, 2))))))[:, None, None, :]


class VicinityAttention(nn.Module):
    """Vicinity attention with feature reduction and the feature-preserving connection, on ``(B, H, W, C)``.

    q, k, v are projected to ``dim // feature_reduction`` channels (split over ``num_heads``); the output is
    ``(q' · Σ k' vᵀ) / (q' · Σ k' + eps)``, projected back to ``dim`` and combined with the channel gate g
    of the input as ``a + a ⊙ g``. Every intermediate (KV, the reciprocal normaliser, the output before and
    after normalising, the projection, the gated result) goes through :func:`abs_clamp`, as published.
    """

    def __init__(self, dim: int, num_heads: int, feature_reduction: int = 2, qkv_bias: bool = True,
                 gate_reduction: int = 1, eps: float = 1e-4):
        super().__init__()
        inner = dim // feature_reduction
        if dim % feature_reduction or inner % num_heads:
            raise ValueError(f"dim {dim} / feature_reduction {feature_reduction} must be divisible by "
                             f"num_heads {num_heads}")
        self.num_heads = num_heads
        self.eps = eps
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.k = nn.Linear(dim, inner, bias=qkv_bias)
        self.v = nn.Linear(dim, inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.gate = FeaturePreservingGate(dim, gate_reduction)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, H, W, C = t.shape
        return t.reshape(B, H * W, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))  # (B, heads, N, d)
        factors = _position_factors(H, W, q)
        q, k = _expand(F.relu(q), factors), _expand(F.relu(k), factors)  # (B, heads, N, 4d)

        kv = abs_clamp(k.transpose(-2, -1) @ v)  # (B, heads, 4d, d)
        z = abs_clamp(1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + self.eps))  # (B, heads, N, 1)
        out = abs_clamp(abs_clamp(q @ kv) * z)
        out = abs_clamp(self.proj(out.transpose(1, 2).reshape(B, H, W, -1)))
        return abs_clamp(out + out * self.gate(x))
