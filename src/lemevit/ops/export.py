"""What the models do differently while they are traced or exported (ONNX, ``torch.export``): a traced graph keeps
every Python number computed from a shape as a constant of the export size, and some operations have no export
for sizes that are not fixed. The forms here compute the same values from the graph's own shapes."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FixedSizeAdaptiveAvgPool2d", "fold", "is_exporting", "with_fixed_size_pooling"]


def is_exporting() -> bool:
    """Whether the caller runs inside an ONNX export, a TorchScript trace or ``torch.export``."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``t`` (B, C, H, W) moved by (dy, dx) pixels, zero-filled, same size: ``out[y, x] = t[y - dy, x - dx]``."""
    H, W = t.shape[-2:]
    if dy > 0:
        t = F.pad(t[..., : H - dy, :], (0, 0, dy, 0))
    elif dy < 0:
        t = F.pad(t[..., -dy:, :], (0, 0, 0, -dy))
    if dx > 0:
        t = F.pad(t[..., :, : W - dx], (dx, 0))
    elif dx < 0:
        t = F.pad(t[..., :, -dx:], (0, -dx))
    return t


def fold(cols: torch.Tensor, size: tuple[int, int], kernel_size: int, padding: int, stride: int) -> torch.Tensor:
    """``F.fold`` of square windows on a grid of ``ceil(size / stride)`` windows, built from slices, pads and
    reshapes (the ONNX export of ``F.fold`` needs a fixed output size).

    Output pixel ``y = stride * w + i - padding`` of window ``w`` at kernel row ``i`` falls on output phase
    ``(i - padding) mod stride``, at window row ``w + (i - padding) // stride``: each kernel position is a shifted
    copy of the window grid added into one phase, and the phases interleave into the output.
    """
    H, W = size
    k, s = kernel_size, stride
    B, CKK, L = cols.shape
    Hp, Wp = -(-H // s), -(-W // s)
    grid = cols.reshape(B, CKK // (k * k), k, k, Hp, Wp)
    phases: dict[tuple[int, int], torch.Tensor] = {}
    for i in range(k):
        dy, ry = divmod(i - padding, s)
        for j in range(k):
            dx, rx = divmod(j - padding, s)
            part = _shifted(grid[:, :, i, j], dy, dx)
            phases[ry, rx] = part if (ry, rx) not in phases else phases[ry, rx] + part
    zero = torch.zeros_like(grid[:, :, 0, 0])
    rows = [torch.stack([phases.get((ry, rx), zero) for rx in range(s)], dim=-1) for ry in range(s)]
    out = torch.stack(rows, dim=-3)  # (B, C, Hp, s, Wp, s)
    return out.reshape(B, -1, Hp * s, Wp * s)[..., :H, :W]


def _pooling_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size): row ``i`` averages the inputs of adaptive pooling's bin ``i`` (``floor(i*size/bins)`` up to
    ``ceil((i+1)*size/bins)``)."""
    matrix = torch.zeros(bins, size, dtype=like.dtype, device=like.device)
    for i in range(bins):
        start, end = (i * size) // bins, -(-((i + 1) * size) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class FixedSizeAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, for graphs of a fixed input size: the ONNX export of adaptive
    pooling exists only where the bins divide the input (UPerNet pools 16 x 16 maps into 3 and 6 bins)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        bins_h = H if self.output_size[0] is None else self.output_size[0]
        bins_w = W if self.output_size[1] is None else self.output_size[1]
        rows, cols = _pooling_matrix(int(H), bins_h, x), _pooling_matrix(int(W), bins_w, x)
        return rows @ x @ cols.T


def with_fixed_size_pooling(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose adaptive average pools are :class:`FixedSizeAdaptiveAvgPool2d`."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.AdaptiveAvgPool2d):
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf,
                    FixedSizeAdaptiveAvgPool2d(child.output_size))
    return module
