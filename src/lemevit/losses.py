"""Losses of the dense tasks beyond cross-entropy."""
from __future__ import annotations

import torch

from lemevit.labels import IGNORE_INDEX

__all__ = ["dice_loss"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One minus the soft Dice coefficient of the softmax, averaged over the classes present in ``target``
    ``(B, H, W)``; pixels whose target is ``IGNORE_INDEX`` are left out. Unlike cross-entropy, a class
    weighs the same however few pixels it covers."""
    num_classes = logits.shape[1]
    keep = target != IGNORE_INDEX
    probs = logits.float().softmax(dim=1)
    classes = target[keep]
    # Summed by class index rather than through a one-hot target: no (B, K, H, W) copies in the training step.
    own = probs.gather(1, target.masked_fill(~keep, 0).unsqueeze(1)).squeeze(1)[keep]
    intersection = own.new_zeros(num_classes).index_add(0, classes, own)
    support = torch.bincount(classes, minlength=num_classes).to(own.dtype)
    predicted = torch.einsum("bkhw,bhw->k", probs, keep.to(probs.dtype))
    dice = 2 * intersection / (predicted + support).clamp_min(1e-6)
    present = support > 0
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0
