"""Interleaved throughput measurement: every model runs once per round, in turn, so that the noise of a
shared machine hits all of them alike; ratios are taken round by round and then summarised."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import timm
import torch

import lemevit  # noqa: F401  (registers our models with timm)

__all__ = ["Measurement", "build_runner", "measure_interleaved"]


@dataclass
class Measurement:
    model: str
    batch_size: int
    img_size: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def throughput(self) -> float:
        """Images per second at the median time of one batch."""
        return self.batch_size / self.median

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def ratio_to(self, reference: Measurement) -> tuple[float, float, float]:
        """Speed-up over ``reference`` as (median, 10th, 90th percentile) of the per-round ratios."""
        ratios = sorted(r / s for r, s in zip(reference.seconds, self.seconds, strict=True))
        pick = lambda q: ratios[min(len(ratios) - 1, round(q * (len(ratios) - 1)))]  # noqa: E731
        return statistics.median(ratios), pick(0.1), pick(0.9)


def build_runner(name: str, batch_size: int, img_size: int, device: str = "cpu", dtype: str = "fp32",
                 channels_last: bool = False, compile: bool = False, freezing: bool = False,
                 model_kwargs: dict | None = None) -> Callable[[], torch.Tensor]:
    """A no-argument callable running one inference batch of model ``name``.

    ``freezing`` turns on inductor's weight freezing (constant folding and prepacked CPU GEMMs), the
    setting PyTorch recommends for compiled CPU inference; it applies process-wide.
    """
    model = timm.create_model(name, num_classes=1000, **(model_kwargs or {})).eval().to(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if compile:
        if freezing:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        model = torch.compile(model)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    autocast = (lambda: torch.autocast(device, dtype=amp)) if amp else nullcontext
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast():
            out = model(x)
        sync()
        return out

    return run


def measure_interleaved(runners: dict[str, Callable[[], torch.Tensor]], batch_size: int, img_size: int,
                        rounds: int = 10, warmup: int = 2, progress: bool = True) -> dict[str, Measurement]:
    """Time every runner once per round, rotating the order each round."""
    names: Sequence[str] = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    results = {name: Measurement(name, batch_size, img_size) for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name]()
            results[name].seconds.append(time.perf_counter() - start)
        if progress:
            print(f"\rround {r + 1}/{rounds}", end="", flush=True)
    if progress:
        print()
    return results
