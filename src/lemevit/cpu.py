"""How lemevit shares a CPU with the other work on the machine.

PyTorch's OpenMP threads busy-wait at the end of every parallel region (libgomp spins for about 300,000
iterations before it sleeps). Alone on the machine that saves a wake-up; beside other processes a spinning thread
burns the time slice its sibling needs to finish its half of the work, so a run slows down far more than its share
of the cores: on a 2-core machine at load 4 a LeMeViT-T training step took 4 to 9 times as long with spinning
threads as with sleeping ones (benchmarks/README.md, "Speed under load"). ``OMP_WAIT_POLICY=PASSIVE`` makes
them sleep. libgomp reads it once, when PyTorch is loaded, so it is set when lemevit is imported before torch
(the ``lemevit`` command always is); a value the user set is kept.

Thread counts follow the CPUs this process may use (its affinity and a cgroup's CPU quota, as in a container or
under ``taskset``), not the cores the machine has.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["available_cpus", "prefer_sleeping_openmp_threads", "use_available_cpus"]


def prefer_sleeping_openmp_threads() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or PyTorch is already loaded (then it is too
    late to matter). Returns whether it was set."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` quota, None when unlimited."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            quota = int(v1_quota.read_text())
            return None if quota <= 0 else quota / int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (rounded up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def use_available_cpus() -> int:
    """Lower PyTorch's intra-op threads to :func:`available_cpus` when it counted more (it counts the machine's
    cores); ``OMP_NUM_THREADS`` set by the user wins. Returns the thread count in use."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > available_cpus():
        torch.set_num_threads(available_cpus())
    return torch.get_num_threads()
