"""Input checks shared by the model files."""
from __future__ import annotations

import torch

from lemevit.ops.export import is_exporting

__all__ = ["check_image_batch"]


def check_image_batch(x: torch.Tensor, in_chans: int, model: str) -> None:
    """Raise a ValueError naming expected and received channels unless ``x`` is (B, in_chans, H, W)."""
    # An exported graph fixes the channels itself; the check would only add a branch the trace cannot record.
    if is_exporting():
        return
    if x.ndim != 4 or x.shape[1] != in_chans:
        got = x.shape[1] if x.ndim > 1 else "?"
        raise ValueError(f"{model} expects {in_chans} input channels: input of shape (B, {in_chans}, H, W) with "
                         f"{in_chans} channels, got shape {tuple(x.shape)} with {got} channels")
