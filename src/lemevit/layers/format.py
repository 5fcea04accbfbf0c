"""Views between the channels-last token maps the models keep, (B, H, W, C), and NCHW for convolutions.

A contiguous (B, H, W, C) tensor permuted to NCHW is an NCHW tensor in the channels-last memory format,
which convolutions and batch norms consume and produce without copying.
"""
from __future__ import annotations

import torch

__all__ = ["nchw", "nhwc"]


def nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view."""
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) view."""
    return x.permute(0, 2, 3, 1)
