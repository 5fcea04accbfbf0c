"""One epoch of oriented detection as a new user runs it first: ``lemevit train --task detection`` on the five
DOTA v1.0 samples of ``../shared`` (split 1.0: the five whole images are validated), the wall clock of the whole
command, Lightning's sanity check and the validation included.

    python benchmarks/detection_epoch.py --img-size 256 --label after

Run it once with each version of the code (``PYTHONPATH=OTHER_CHECKOUT/src``) back to back: the figures are merged
into results/detection_epoch.json under --label, and the run (its best.ckpt is an untrained detector for
detection_scene.py) stays in --work/<label>-<img-size>. The phases (setup and sanity check until the first training
step, training steps, validation) come from the times of the run's TensorBoard events; ``--unfinished`` records them
for a run of the same command that was stopped before its end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "dota_v1_samples"


def phases(run: Path) -> dict:
    """Seconds of the phases of a run from its TensorBoard events: from the logger's start to the first training
    step (setup and Lightning's sanity check), the training steps logged, and the validation after them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((run / "logs").glob("events.out.tfevents.*"))
    started = float(events.name.split(".")[3])
    log = EventAccumulator(str(events))
    log.Reload()
    steps = log.Scalars("train/loss_step")
    found = {"until_first_step_seconds": round(steps[0].wall_time - started, 1), "steps_logged": len(steps),
             "seconds_per_step": round((steps[-1].wall_time - steps[0].wall_time) / max(1, len(steps) - 1), 1)}
    if "val/map50" in log.Tags()["scalars"]:
        found["validation_seconds"] = round(log.Scalars("val/map50")[-1].wall_time - steps[-1].wall_time, 1)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True, help="what the code measured is (before, after, ...)")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--train-options", default="", help="more options for lemevit train, quoted")
    p.add_argument("--work", type=Path, default=HERE / "runs" / "detection_epoch")
    p.add_argument("--unfinished", type=float, metavar="SECONDS",
                   help="record the phases of the stopped run in --work under --label, which ran this long")
    args = p.parse_args()
    run = args.work / f"{args.label}-{args.img_size}"
    output = HERE / "results" / "detection_epoch.json"
    record = json.loads(output.read_text()) if output.is_file() else {}
    if args.unfinished:
        record[f"{args.label}-{args.img_size}"] = {
            "what": "the phases of a run of this benchmark's command stopped before its end", "finished": False,
            "seconds_when_stopped": args.unfinished, **phases(run), "load_average_when_stopped": os.getloadavg(),
            "machine": machine_description()}
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        print(f"recorded the phases of {run} in {output}")
        return
    shutil.rmtree(run, ignore_errors=True)
    command = ["train", "--task", "detection", "--data", str(args.data), "--img-size", str(args.img_size),
               "--epochs", "1", "--split", "1.0", "--num-workers", "0", "--accelerator", "cpu", "--output", str(run),
               *args.train_options.split()]
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    code = lemevit(command)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if code != 0:
        raise SystemExit(f"lemevit {' '.join(command)} failed (exit {code})")
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/map50")]
    # The commit of the code measured: the checkout lemevit was imported from (PYTHONPATH).
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(lemevit.__code__.co_filename).parent)
    record[f"{args.label}-{args.img_size}"] = {
        "what": "wall clock of one epoch of lemevit train --task detection on the five DOTA samples, sanity check and "
                "validation of the five whole images included",
        "command": f"lemevit {' '.join(command[:-2])} --output RUN",
        "code_commit": commit.stdout.strip(), "seconds": round(wall, 1),
        "cpu_seconds": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "val_map50": float(rows[-1]["val/map50"]) if rows else None, "checkpoint": str(run / "best.ckpt"),
        **phases(run),
        "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine_description(),
    }
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"{args.label}: one epoch at {args.img_size} px in {wall:.1f} s; wrote {output}")


if __name__ == "__main__":
    main()
