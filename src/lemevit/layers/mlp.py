"""Token MLP (Linear -> GELU -> Linear) with cache-friendly paths for CPU inference and training."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lemevit.ops.export import is_exporting

__all__ = ["Mlp"]


class _ChunkedGeluMlp(torch.autograd.Function):
    """``fc2(gelu(fc1(x)))`` on (rows, C) inputs, forward and backward in row chunks.

    Only the pre-activation chunks are kept for backward; the activation is recomputed there chunk by chunk,
    so neither it nor the gradients of the hidden tensor ever exist whole: each lives in the cache while its
    chunk's products run, and the weight gradients are accumulated chunk by chunk.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, step: int):
        out = x.new_empty(x.shape[0], w2.shape[0])
        hidden = []
        for start in range(0, x.shape[0], step):
            h = F.linear(x[start:start + step], w1, b1)
            torch.addmm(b2, F.gelu(h), w2.t(), out=out[start:start + step])
            hidden.append(h)
        ctx.step = step
        ctx.save_for_backward(x, w1, w2, *hidden)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w1, w2, *hidden = ctx.saved_tensors
        grad_x = torch.empty_like(x)
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = w1.new_zeros(w1.shape[0])
        for h, start in zip(hidden, range(0, x.shape[0], ctx.step), strict=True):
            rows = slice(start, start + ctx.step)
            grad_w2.addmm_(grad[rows].t(), F.gelu(h))
            grad_h = torch.ops.aten.gelu_backward(grad[rows] @ w2, h)
            grad_b1 += grad_h.sum(0)
            grad_w1.addmm_(grad_h.t(), x[rows])
            torch.mm(grad_h, w1, out=grad_x[rows])
        return grad_x, grad_w1, grad_b1, grad_w2, grad.sum(0), None


class Mlp(nn.Module):
    """Linear -> activation -> Linear, state-dict compatible with timm's ``Mlp`` (``fc1``, ``fc2``).

    On CPU without autograd, a long token sequence is processed in row chunks whose hidden activation
    stays around ``chunk_bytes``: the 4x wider hidden tensor of a high-resolution stage then never leaves
    the cache and is never freshly allocated (large allocations are mmapped and page-faulted anew on
    every call by glibc), which is where most of the GELU and bias-copy time of the first stages goes.
    Results are identical to the plain path. With autograd on CPU (training; exact GELU, no dropout), the same
    chunks run forward and backward through :class:`_ChunkedGeluMlp`: outputs identical, gradients equal up to
    the order of the chunk sums. GPUs, autocast, exports and ``torch.compile`` use the plain path.
    """

    chunk_bytes = 2 << 20
    chunk_above_bytes = 16 << 20

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

    def _chunks_apply(self, x: torch.Tensor) -> bool:
        # A traced graph would keep the chunk boundaries of the export size: exports take the plain form.
        return not (x.device.type != "cpu" or is_exporting() or torch.compiler.is_compiling()
                    or torch.is_autocast_enabled("cpu")
                    or x.numel() // x.shape[-1] * self.fc1.out_features * x.element_size() <= self.chunk_above_bytes)

    def _use_chunks(self, x: torch.Tensor) -> bool:
        return not (self.training or torch.is_grad_enabled()) and self._chunks_apply(x)

    def _use_training_chunks(self, x: torch.Tensor) -> bool:
        act = self.act
        no_dropout = not self.training or (self.drop1.p == 0 and self.drop2.p == 0)
        return (torch.is_grad_enabled() and no_dropout and type(act) is nn.GELU and act.approximate == "none"
                and self._chunks_apply(x))

    def _chunked_training(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, self.chunk_bytes // (self.fc1.out_features * x.element_size()))
        out = _ChunkedGeluMlp.apply(x.reshape(-1, x.shape[-1]), self.fc1.weight, self.fc1.bias,
                                    self.fc2.weight, self.fc2.bias, step)
        return out.view(*x.shape[:-1], self.fc2.out_features)

    def _chunked(self, x: torch.Tensor, norm: nn.Module | None, residual: bool) -> torch.Tensor:
        """``[x +] fc2(act(fc1([norm](x))))`` chunk by chunk; norm and residual never touch the whole map."""
        rows, hidden = x.numel() // x.shape[-1], self.fc1.out_features
        flat = x.reshape(rows, x.shape[-1])
        out = flat.new_empty(rows, self.fc2.out_features)
        step = max(1, self.chunk_bytes // (hidden * x.element_size()))
        for start in range(0, rows, step):
            rows_in = flat[start:start + step]
            h = self.act(F.linear(norm(rows_in) if norm is not None else rows_in, self.fc1.weight, self.fc1.bias))
            base = rows_in + self.fc2.bias if residual else self.fc2.bias
            torch.addmm(base, h, self.fc2.weight.t(), out=out[start:start + step])
        return out.view(*x.shape[:-1], self.fc2.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_chunks(x):
            return self._chunked(x, None, False)
        return self._chunked_training(x) if self._use_training_chunks(x) else self._plain(x)

    def residual(self, x: torch.Tensor, norm: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        """The pre-norm MLP sub-block ``x + drop_path(mlp(norm(x)))``."""
        if self._use_chunks(x):
            return self._chunked(x, norm, True)
        if self._use_training_chunks(x):
            return x + drop_path(self._chunked_training(norm(x)))
        return x + drop_path(self._plain(norm(x)))
