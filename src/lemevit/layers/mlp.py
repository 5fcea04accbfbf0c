"""Token MLP (Linear -> GELU -> Linear) with a cache-friendly path for CPU inference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lemevit.ops.export import is_exporting

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Linear -> activation -> Linear, state-dict compatible with timm's ``Mlp`` (``fc1``, ``fc2``).

    On CPU without autograd, a long token sequence is processed in row chunks whose hidden activation
    stays around ``chunk_bytes``: the 4x wider hidden tensor of a high-resolution stage then never leaves
    the cache and is never freshly allocated (large allocations are mmapped and page-faulted anew on
    every call by glibc), which is where most of the GELU and bias-copy time of the first stages goes.
    Results are identical to the plain path; GPUs, training, autocast and ``torch.compile`` use the
    plain path.
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

    def _use_chunks(self, x: torch.Tensor) -> bool:
        # A traced graph would keep the chunk boundaries of the export size: exports take the plain form.
        return not (x.device.type != "cpu" or self.training or torch.is_grad_enabled() or is_exporting()
                    or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")
                    or x.numel() // x.shape[-1] * self.fc1.out_features * x.element_size() <= self.chunk_above_bytes)

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
        return self._chunked(x, None, False) if self._use_chunks(x) else self._plain(x)

    def residual(self, x: torch.Tensor, norm: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        """The pre-norm MLP sub-block ``x + drop_path(mlp(norm(x)))``."""
        if self._use_chunks(x):
            return self._chunked(x, norm, True)
        return x + drop_path(self._plain(norm(x)))
