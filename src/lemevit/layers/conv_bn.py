"""Convolution followed by batch norm, folded into one convolution at inference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv_bn"]


def conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``. In eval mode the norm's affine map is folded into the convolution's weights
    (a few thousand multiplications), which saves a full pass over the output map."""
    if norm.training:
        return norm(conv(x))
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
