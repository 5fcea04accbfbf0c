"""The attention layers compute what their papers define: VVT's vicinity attention against its quadratic
definition (and without ever building the token-by-token matrix), LVT's convolutional self-attention window by
window."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lemevit.layers.lvt_attention import ConvolutionalSelfAttention
from lemevit.layers.vicinity_attention import VicinityAttention


def _randomise(module: torch.nn.Module, std: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def test_vicinity_attention_matches_its_quadratic_definition_on_a_non_square_map():
    torch.manual_seed(0)
    attn = VicinityAttention(16, num_heads=2).eval()
    _randomise(attn)
    x = torch.randn(1, 5, 7, 16)
    B, H, W, C = x.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    a, b = (math.pi / 2) * rows.flatten() / H, (math.pi / 2) * cols.flatten() / W

    def heads(t):
        return t.reshape(H * W, 2, -1)

    with torch.no_grad():
        q, k, v = F.relu(heads(attn.q(x))), F.relu(heads(attn.k(x))), heads(attn.v(x))
        vicinity = torch.cos(a[:, None] - a[None]) + torch.cos(b[:, None] - b[None])  # (N, N)
        weights = torch.einsum("nhd,mhd->hnm", q, k) * vicinity
        out = torch.einsum("hnm,mhd->nhd", weights, v) / (weights.sum(-1).T[..., None] + 1e-4)
        out = attn.proj(out.reshape(B, H, W, -1))
        expected = out + out * attn.gate(x)
        torch.testing.assert_close(attn(x), expected, atol=1e-3, rtol=1e-3)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_vicinity_attention_never_builds_a_token_by_token_matrix():
    attn = VicinityAttention(32, num_heads=2).eval()
    x = torch.randn(1, 64, 64, 32)
    N, C = 64 * 64, 32
    with torch.no_grad(), _LargestTensor() as probe:
        attn(x)
    assert probe.largest <= 4 * N * C < N * N


def test_csa_matches_its_window_by_window_definition_on_an_odd_map():
    torch.manual_seed(0)
    csa = ConvolutionalSelfAttention(8, num_heads=2).eval()
    _randomise(csa)
    x = torch.randn(1, 7, 9, 8)
    H, W, C = x.shape[1:]
    with torch.no_grad():
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True)[0]  # one pixel per window
        padded = F.pad(x[0], (0, 0, 1, 1, 1, 1))
        expected = torch.zeros(H, W, C)
        for i in range(pooled.shape[1]):
            for j in range(pooled.shape[2]):
                mix = (csa.attn(pooled[:, i, j]).view(2, 9, 9) * csa.scale).softmax(-1)
                offsets = [(di, dj) for di in range(3) for dj in range(3)]
                values = torch.stack([csa.v_weight[p] @ padded[2 * i + di, 2 * j + dj]
                                      for p, (di, dj) in enumerate(offsets)]).view(9, 2, C // 2)
                mixed = torch.einsum("hpq,qhd->phd", mix, values).reshape(9, C)
                for p, (di, dj) in enumerate(offsets):
                    r, c = 2 * i + di - 1, 2 * j + dj - 1
                    if 0 <= r < H and 0 <= c < W:
                        expected[r, c] += mixed[p]
        torch.testing.assert_close(csa(x)[0], csa.proj(expected), atol=1e-4, rtol=1e-4)
