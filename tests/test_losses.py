"""Losses of the dense tasks on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lemevit.labels import IGNORE_INDEX
from lemevit.losses import dice_loss


def test_dice_loss_on_a_hand_made_case_counts_present_classes_and_skips_ignored_pixels():
    # Pixel 1 (class 0) gets probabilities (3/4, 1/4, 0), pixel 2 (class 1) (1/2, 1/2, 0); the third pixel is
    # ignored however wrong, and class 2, absent from the target, does not count.
    logits = torch.tensor([[[[np.log(3.0), 0.0, 10.0]], [[0.0, 0.0, -10.0]], [[-40.0, -40.0, -40.0]]]])
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    dice_0 = 2 * (3 / 4) / ((3 / 4 + 1 / 2) + 1)
    dice_1 = 2 * (1 / 2) / ((1 / 4 + 1 / 2) + 1)
    assert float(dice_loss(logits, target)) == pytest.approx(1 - (dice_0 + dice_1) / 2, abs=1e-6)
    perfect = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 2]]]), 3).permute(0, 3, 1, 2) * 50.0
    assert float(dice_loss(perfect, target)) == pytest.approx(0, abs=1e-6)
    assert float(dice_loss(logits, torch.full_like(target, IGNORE_INDEX))) == 0
