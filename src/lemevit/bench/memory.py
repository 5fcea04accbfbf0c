"""Peak memory of one inference batch or one training step, in the steady state after a first step.

On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the step. On CPU: the rise of
the process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the
resident set just before the step, measured in a fresh child process so that memory the allocator kept from
earlier models does not hide the growth (Linux only).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["peak_memory_mib"]


def _status_kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _measure_here(step, device: str) -> float:
    # The first step allocates what then stays (oneDNN/cuDNN workspaces, optimizer state, gradients): the
    # figure is what one steady-state step adds on top of that.
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - base) / 1024


def peak_memory_mib(name: str, img_size: int, batch_size: int, device: str = "cpu", dtype: str = "fp32",
                    channels_last: bool = False, mode: str = "inference") -> float:
    """Peak memory in MiB that one step of ``mode`` (``"inference"`` or ``"train"``) adds. Raises
    RuntimeError with the child's last error line when the step fails (e.g. out of memory)."""
    from lemevit.bench.throughput import build_step

    if device.startswith("cuda"):
        step = build_step(name, batch_size, img_size, device, dtype, channels_last, mode=mode)
        return _measure_here(step, device)
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("CPU peak memory needs Linux's /proc/self/clear_refs")
    spec = {"name": name, "img_size": img_size, "batch_size": batch_size, "device": device, "dtype": dtype,
            "channels_last": channels_last, "mode": mode}
    done = subprocess.run([sys.executable, "-m", "lemevit.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"memory probe exited with status {done.returncode}")
    return float(done.stdout.strip().splitlines()[-1])


def _child() -> None:
    from lemevit.bench.throughput import build_step

    parser = argparse.ArgumentParser(description="measure one step's peak memory (used by peak_memory_mib)")
    parser.add_argument("spec", help="JSON of peak_memory_mib's arguments")
    spec = json.loads(parser.parse_args().spec)
    step = build_step(spec.pop("name"), spec.pop("batch_size"), spec.pop("img_size"), **spec)
    print(_measure_here(step, spec["device"]))


if __name__ == "__main__":
    _child()
