"""LeMeViT's attention layers in training: forward and gradients equal the explicit per-head definition, and the
backward assembles each q/k/v projection's gradient in one pass (no stacked or cloned copies)."""
from __future__ import annotations

import math
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lemevit.layers.meta_attention import DualCrossAttention, TokenSelfAttention


def _randomise(module: torch.nn.Module, std: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """Explicit multi-head attention on (B, L, C) projections."""
    def split(t):
        return t.unflatten(-1, (heads, -1))

    weights = (torch.einsum("bnhd,bmhd->bhnm", split(q), split(k)) * scale).softmax(-1)
    return torch.einsum("bhnm,bmhd->bnhd", weights, split(v)).flatten(2)


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


def test_dual_cross_attention_trains_as_its_definition():
    torch.manual_seed(0)
    attn = DualCrossAttention(64, num_heads=2).train()
    _randomise(attn, 0.1)
    x = torch.randn(2, 25, 64, requires_grad=True)
    c = torch.randn(2, 16, 64, requires_grad=True)
    weights = torch.randn(2, 25, 64), torch.randn(2, 16, 64)
    leaves = [x, c, *attn.parameters()]

    out_x, out_c = attn(x, c)
    ours = _grads((out_x * weights[0]).sum() + (out_c * weights[1]).sum(), leaves)

    q_i, k_i, v_i = attn.qkv_img(x).chunk(3, -1)
    q_m, k_m, v_m = attn.qkv_meta(c).chunk(3, -1)
    scale = 64 ** -0.5
    ref_x = attn.proj_img(_attention(q_i, k_m, v_m, 2, math.log(16) / math.log(25) * scale))
    ref_c = attn.proj_meta(_attention(q_m, k_i, v_i, 2, scale))
    reference = _grads((ref_x * weights[0]).sum() + (ref_c * weights[1]).sum(), leaves)

    torch.testing.assert_close(out_x, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c, ref_c, atol=1e-5, rtol=1e-5)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_self_attention_trains_as_its_definition():
    torch.manual_seed(1)
    attn = TokenSelfAttention(64, num_heads=2).train()
    _randomise(attn, 0.1)
    x = torch.randn(2, 30, 64, requires_grad=True)
    weight = torch.randn(2, 30, 64)
    leaves = [x, *attn.parameters()]

    out = attn(x)
    ours = _grads((out * weight).sum(), leaves)
    ref = attn.proj(_attention(*attn.qkv(x).chunk(3, -1), 2, 32 ** -0.5))
    reference = _grads((ref * weight).sum(), leaves)

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_backward_assembles_each_qkv_gradient_in_one_copy():
    attn = DualCrossAttention(64, num_heads=2).train()
    out_x, out_c = attn(torch.randn(2, 49, 64, requires_grad=True), torch.randn(2, 16, 64, requires_grad=True))
    loss = out_x.sum() + out_c.sum()
    with _OpCounter() as ops:
        loss.backward()
    copies = {name: n for name, n in ops.counts.items() if name in ("cat", "stack", "clone", "copy_", "_to_copy")}
    assert copies == {"cat": 2}  # one per qkv projection (image, meta)
