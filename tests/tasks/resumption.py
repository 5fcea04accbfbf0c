"""The kill-and-resume check every task's tests run: a run killed by SIGKILL mid-training and resumed ends with
the weights of an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lemevit.cli import main


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights of the run's last checkpoint, with the raw weights beside the EMA ones when it kept an EMA."""
    checkpoint = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    return {**checkpoint["state_dict"],
            **{f"raw.{k}": v for k, v in checkpoint.get("current_model_state", {}).items()}}


def check_kill_and_resume(args: list[str], tmp_path: Path, epochs: int, monitor: str,
                          steps_per_epoch: int | None = None) -> dict[str, torch.Tensor]:
    """Train ``args`` (a ``train`` command without ``--output``) uninterrupted and, in a second directory, killed
    once its first checkpoint exists, then resumed; assert that both end with the same weights and that the
    resumed log validated every epoch once (``monitor`` is a validation column). With ``steps_per_epoch``, assert
    that the checkpoint it resumed from was written within an epoch. Returns the final weights."""
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(args + ["--output", str(reference)]) == 0

    command = [sys.executable, "-m", "lemevit.cli", *args, "--output", str(killed)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not (killed / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(killed / "last.ckpt", map_location="cpu", weights_only=True)
    assert at_kill["epoch"] < epochs - 1, "the run finished before it could be killed"
    if steps_per_epoch:
        assert at_kill["global_step"] % steps_per_epoch, f"killed at an epoch's end (step {at_kill['global_step']})"

    assert main(["train", "--output", str(killed), "--resume"]) == 0
    with open(killed / "logs" / "metrics.csv", newline="") as f:
        validated = [int(r["epoch"]) for r in csv.DictReader(f) if r.get(monitor)]
    assert validated == list(range(epochs))
    resumed, uninterrupted = final_weights(killed), final_weights(reference)
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=1e-5, msg=key)
    return resumed
