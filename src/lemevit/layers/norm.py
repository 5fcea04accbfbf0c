"""Batch norm that also trains on a batch of one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SingleValueSafeBatchNorm2d", "allow_single_value_batch_norm"]


class SingleValueSafeBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, in training, normalises an input holding one value per channel (a batch of one
    pooled to 1×1: UperNet's global pooling branch) with its running statistics instead of failing: one value
    has no batch variance. Any other input is normalised as by ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1] and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def allow_single_value_batch_norm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm2d`` of ``module`` a :class:`SingleValueSafeBatchNorm2d` (same parameters, buffers
    and state-dict keys); returns ``module``."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = SingleValueSafeBatchNorm2d
    return module
