"""The seeded order and augmentation of training items: functions of (seed, epoch) only, so that a resumed run
draws the same batches as an uninterrupted one, on any number of workers and devices."""
from __future__ import annotations

import math
import random

import numpy as np
import torch

__all__ = ["EpochShuffle", "epoch_seed", "reseed", "step_seed"]

_EPOCH_STRIDE = 1_000_003  # a prime: the seeds of (seed, epoch) pairs do not collide for any realistic run


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run seeded by ``seed``."""
    return (seed * _EPOCH_STRIDE + epoch) % 2**63


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the random state a process trains one step with (dropout, drop path, the sampling of an
    Oriented R-CNN): distinct per step and per rank, and a function of them only, so that a resumed run draws what
    an uninterrupted one draws whatever else used the random state in between."""
    return (seed * _EPOCH_STRIDE + step * 7919 + rank + 1) % 2**32


def reseed(seed: int) -> None:
    """Seed Python, NumPy and torch (Lightning's ``seed_everything`` without its log line)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A random order fixed by ``seed``: every iteration yields the same permutation (the data module builds one
    per epoch). With ``start``, the permutation is rotated to begin at its ``start``-th item: a run resumed within
    an epoch takes the items it has not trained on first, and its epoch ends before the rotated ones come round
    (the length stays the epoch's, which is what Lightning and a distributed sampler count with). With ``repeats``,
    the items come as ``(index, copy)`` keys, each index ``repeats`` times in a row."""

    def __init__(self, length: int, seed: int, start: int = 0, repeats: int = 1):
        self.length, self.seed, self.start, self.repeats = length, seed, start % max(length, 1), repeats

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed))
        if self.repeats > 1:
            # DeiT's repeated augmentation: each item ``repeats`` times in a row, as (index, copy) keys that the
            # dataset augments each in its own way; the epoch keeps its length, so it holds 1/repeats of the items.
            # A distributed sampler deals consecutive keys to consecutive ranks: the copies land on different ones.
            keys = [(index, copy) for index in order[:math.ceil(self.length / self.repeats)].tolist()
                    for copy in range(self.repeats)][:self.length]
            return iter(keys[self.start:] + keys[:self.start])
        return iter(torch.cat([order[self.start:], order[:self.start]]).tolist())
