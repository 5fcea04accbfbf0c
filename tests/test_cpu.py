"""lemevit on a CPU it shares: OpenMP threads that sleep instead of spinning, thread counts from the CPUs allowed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lemevit import cpu


def _openmp_settings(code: str, **env: str) -> str:
    """What libgomp says it runs with (OMP_DISPLAY_ENV=VERBOSE prints its settings to stderr when torch loads it;
    GOMP_SPINCOUNT is how long a waiting thread spins: 300,000 by default, 0 with OMP_WAIT_POLICY=PASSIVE)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environment.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return done.stderr


def test_importing_lemevit_makes_openmp_threads_sleep_when_they_wait():
    assert "GOMP_SPINCOUNT = '0'" in _openmp_settings("import lemevit")


def test_a_wait_policy_the_user_chose_is_kept():
    assert "GOMP_SPINCOUNT = '0'" not in _openmp_settings("import lemevit", GOMP_SPINCOUNT="10000")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in _openmp_settings("import lemevit", OMP_WAIT_POLICY="ACTIVE")


def test_nothing_is_set_once_torch_is_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert not cpu.prefer_sleeping_openmp_threads()  # torch is loaded in this process: too late to matter
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)])
def test_a_cgroup_quota_caps_the_cpus(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert cpu.available_cpus(tmp_path) == min(affinity, expected or affinity)


def test_torch_threads_follow_the_cpus_allowed(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "available_cpus", lambda: 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert cpu.use_available_cpus() == 1
    finally:
        torch.set_num_threads(threads)


def test_threads_the_user_set_are_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(cpu, "available_cpus", lambda: 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert cpu.use_available_cpus() == 3
    finally:
        torch.set_num_threads(threads)
