"""The export forms of operations equal the operations they stand for."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lemevit.ops.export import FixedSizeAdaptiveAvgPool2d, fold, with_fixed_size_pooling


@pytest.mark.parametrize(("size", "kernel", "padding", "stride"), [
    ((56, 56), 3, 1, 2), ((55, 57), 3, 1, 2), ((7, 9), 3, 1, 1), ((10, 10), 5, 2, 2), ((9, 8), 3, 1, 3)])
def test_fold_equals_torch_fold(size, kernel, padding, stride):
    windows = -(-size[0] // stride) * -(-size[1] // stride)
    cols = torch.randn(2, 4 * kernel * kernel, windows)
    torch.testing.assert_close(fold(cols, size, kernel, padding, stride),
                               F.fold(cols, size, kernel, padding=padding, stride=stride), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 5)])
@pytest.mark.parametrize("size", [(16, 16), (7, 11), (1, 1)])
def test_fixed_size_adaptive_pooling_equals_adaptive_pooling(bins, size):
    x = torch.randn(2, 5, *size)
    torch.testing.assert_close(FixedSizeAdaptiveAvgPool2d(bins)(x), nn.AdaptiveAvgPool2d(bins)(x), atol=1e-6, rtol=0)


def test_with_fixed_size_pooling_replaces_the_pools_of_a_copy():
    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.AdaptiveAvgPool2d(3)))
    copy = with_fixed_size_pooling(network)
    assert isinstance(network[1][0], nn.AdaptiveAvgPool2d) and isinstance(copy[1][0], FixedSizeAdaptiveAvgPool2d)
    x = torch.randn(1, 3, 10, 10)
    torch.testing.assert_close(copy(x), network(x), atol=1e-6, rtol=0)
