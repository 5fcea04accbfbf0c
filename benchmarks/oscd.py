"""OSCD: 13 Sentinel-2 bands against RGB, pretrained against scratch, BIT against the siamese UNet, on four labelled
cities of the release never trained on. Every run is `lemevit train --task change --data OSCD_ROOT` on the release
itself (stacked into the run), scored by `lemevit eval --data OSCD_ROOT --split-files test=FILE`, both run as
commands.

    python benchmarks/oscd.py --data /path/to/OSCD            # every arm not yet finished, then the table
    python benchmarks/oscd.py --data /path/to/OSCD --arm rgb  # one arm
    python benchmarks/oscd.py --collect                       # only results/oscd.json and the table

Each arm's run is kept in RUNS/<arm>/ with record.json (not committed); an arm with a record is not run again, one
stopped midway is resumed from its last.ckpt. The held-out scores are those of the last epoch's weights at the
run's threshold (0.5); the held-out cities are validated on every epoch only to show the curve, nothing is chosen
on them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.engine import training_minutes
from lemevit.io import atomic_path

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
# The 14 labelled cities, by change fraction: paris 0.3 %, bercy 0.7, saclay_e 1.0, bordeaux 1.0, nantes 1.1,
# aguasclaras 1.6, pisa 1.6, cupertino 2.4, beihai 2.5, mumbai 2.6, rennes 2.6, beirut 2.7, hongkong 3.6, abudhabi
# 3.8. Held out: one of very little change (paris, 0.16 Mpx), one of little (nantes, 0.30 Mpx), one of the middle
# and the largest held out (cupertino, 0.80 Mpx), one of much (hongkong, 0.38 Mpx); 1.64 Mpx in all.
HELD_OUT = ("cupertino", "hongkong", "nantes", "paris")
TRAIN = ("abudhabi", "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "mumbai", "pisa", "rennes", "saclay_e")
SPLIT_FILES = {"train": HERE / "results" / "oscd_train.txt", "val": HERE / "results" / "oscd_heldout.txt"}
# One budget for every arm: 96 px crops covering each training city once an epoch (608 crops), batch 8, 6 epochs
# (456 steps), the held-out cities validated every second epoch (a curve; nothing is chosen on it).
COMMON = {"img_size": 96, "batch_size": 8, "epochs": 6, "val_every": 2, "seed": 0}
RGB = ["B04", "B03", "B02"]
ARMS = {
    "bit-aid150-13": {"head": "bit", "model": "lemevit_tiny.aid150"},  # the stem's RGB weights adapted to 13 bands
    "bit-aid150-rgb": {"head": "bit", "model": "lemevit_tiny.aid150", "bands": RGB},
    "bit-scratch-13": {"head": "bit", "model": "lemevit_tiny"},
    "siamunet-aid150-13": {"head": "siamunet", "model": "lemevit_tiny.aid150"},
    "siamunet-aid150-rgb": {"head": "siamunet", "model": "lemevit_tiny.aid150", "bands": RGB},
}
# 13 bands against RGB once more with another seed: one seed's difference of a few hundredths can be noise.
ARMS |= {f"{arm}-seed1": {**ARMS[arm], "seed": 1} for arm in ("bit-aid150-13", "bit-aid150-rgb")}


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, dict):
            out += [flag, *(f"{k}={v}" for k, v in value.items())]
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def lemevit(args: list[str], log) -> float:
    """Run ``lemevit ARGS`` (this checkout's) to the end; the seconds it took."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lemevit.cli", *args], env=env, check=True, stdout=log,
                   stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def epoch_scores(run: Path) -> list[dict]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/f1")]
    return [{"epoch": int(r["epoch"]), "f1": float(r["val/f1"])} for r in rows]


def run_arm(arm: str, data: Path, runs: Path) -> dict:
    run = runs / arm
    if (run / "record.json").is_file():
        return json.loads((run / "record.json").read_text())
    for subset, cities in (("train", TRAIN), ("val", HELD_OUT)):
        if not SPLIT_FILES[subset].is_file() or SPLIT_FILES[subset].read_text().split() != list(cities):
            with atomic_path(SPLIT_FILES[subset]) as tmp:
                tmp.write_text("".join(f"{city}\n" for city in cities))
    settings = {**COMMON, **ARMS[arm]}
    train = ["train", "--task", "change", "--data", str(data), *flags(settings), "--split-files",
             *(f"{k}={v}" for k, v in SPLIT_FILES.items()), "--num-workers", "0", "--output", str(run)]
    evaluate = ["eval", "--checkpoint", str(run / "last.ckpt"), "--data", str(data), "--split-files",
                f"test={SPLIT_FILES['val']}", "--num-workers", "0", "--output", str(run / "eval_last")]
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "commands.log", "a") as log:
        resumed = (run / "last.ckpt").is_file()
        seconds = lemevit(["train", "--output", str(run), "--resume"] if resumed else train, log)
        print(f"{arm}: {'resumed and ' if resumed else ''}trained in {seconds / 60:.1f} min", flush=True)
        eval_seconds = lemevit(evaluate, log)
    metrics = json.loads((run / "eval_last" / "metrics.json").read_text())
    hparams = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    record = {"arm": arm, "settings": settings, "in_chans": hparams["in_chans"],
              "band_names": list(hparams["band_names"]),
              "commands": [shlex.join(["lemevit", *train]), shlex.join(["lemevit", *evaluate])],
              # Wall clock on a 2-core machine shared with other jobs: a measure of this run under that load only.
              "train_minutes": training_minutes(run / "last.ckpt"),
              "last_command_minutes": seconds / 60,
              "eval_minutes": eval_seconds / 60, "threads": torch.get_num_threads(),
              "held_out": {key: metrics.get(key) for key in ("threshold", "f1", "iou", "precision", "recall", "oa",
                                                             "best_threshold", "best_f1")},
              "per_city": {p["name"]: {k: p[k] for k in ("f1", "iou", "precision", "recall", "changed_pixels")}
                           for p in metrics["per_pair"]},
              "held_out_f1_per_epoch": epoch_scores(run)}
    with atomic_path(run / "record.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("arm", "train_minutes", "held_out")}), flush=True)
    return record


def collect(runs: Path) -> None:
    stored = HERE / "results" / "oscd.json"
    records = json.loads(stored.read_text())["arms"] if stored.is_file() else {}
    records |= {r["arm"]: r for r in (json.loads(p.read_text()) for p in sorted(runs.glob("*/record.json")))}
    result = {"train_cities": list(TRAIN), "held_out_cities": list(HELD_OUT), "common": COMMON,
              "arms": {arm: records[arm] for arm in ARMS if arm in records}, "torch": torch.__version__,
              "device": "cpu", "machine": machine_description()}
    with atomic_path(stored) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print("| arm | head | backbone | bands | seed | F1 | IoU | precision | recall | F1 at best threshold | training |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, r in result["arms"].items():
        s, h = r["settings"], r["held_out"]
        print(f"| {arm} | {s['head']} | {s['model']} | {r['in_chans']} | {s['seed']} | {h['f1'] or 0:.3f} | "
              f"{h['iou'] or 0:.3f} | {h['precision'] or 0:.3f} | {h['recall'] or 0:.3f} | {h['best_f1'] or 0:.3f} @ "
              f"{h['best_threshold']} | {r['train_minutes']:.1f} min |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="the OSCD release (the folder holding 'Onera Satellite Change Detection dataset - "
                                  "Images' and '... - Train Labels')")
    p.add_argument("--runs", default=str(HERE / "runs" / "oscd"))
    p.add_argument("--arm", action="append", choices=list(ARMS), help="the arms to run (default: all)")
    p.add_argument("--collect", action="store_true", help="only write results/oscd.json and print the table")
    args = p.parse_args()
    runs = Path(args.runs)
    if not args.collect:
        if not args.data:
            p.error("--data is required to run arms")
        for arm in args.arm or ARMS:
            run_arm(arm, Path(args.data), runs)
    collect(runs)


if __name__ == "__main__":
    main()
