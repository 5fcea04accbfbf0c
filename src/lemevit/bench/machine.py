"""What a measurement ran on: the CPU by its model name and vector extensions, since speed is only comparable on the
same CPU."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["cpu_capability", "cpu_name", "machine_description"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is often empty)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def cpu_capability() -> str:
    """The widest vector extension PyTorch's CPU kernels dispatch to here (``AVX2``, ``AVX512``, ...). Virtual machines
    of one model name (``AMD EPYC``) differ in it, and it changes how models rank: ResNet-18 ran 2.0 times as fast as
    LeMeViT-T with AVX-512 and 1.25 times with AVX2 only (benchmarks/README, the zoo's Pareto)."""
    return torch.backends.cpu.get_cpu_capability()


def machine_description() -> str:
    """The architecture, the CPU and its vector extension, e.g. ``x86_64, AMD EPYC, AVX2``, for a benchmark's
    record."""
    return f"{platform.machine()}, {cpu_name()}, {cpu_capability()}"
