"""What a measurement ran on: the CPU by its model name, since speed is only comparable on the same one."""
from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_name", "machine_description"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is often empty)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown cpu"


def machine_description() -> str:
    """The architecture and the CPU, e.g. ``x86_64, AMD EPYC``, for a benchmark's record."""
    return f"{platform.machine()}, {cpu_name()}"
