"""Where inference spends its time, stage by stage (reading, backbone, proposals, NMS, merging), for the summary
``predict`` prints: a detector's cost moves between stages with what the model has learnt (an untrained one
sends thousands of boxes to NMS), which a total alone would hide."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Seconds per named stage, added up over every call of :meth:`stage`, in the order stages first ran.

    On CUDA the device is synchronised at both ends of a stage, so that its time is its own rather than that of
    the kernels queued before it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: dict[str, float]) -> None:
        """Add the seconds of another timer's stages (another image's, another process's)."""
        for name, seconds in other.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def describe(self) -> str:
        """``stage 1.2 s (40 %), ...``, in the order the stages ran."""
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in self.seconds.items())
