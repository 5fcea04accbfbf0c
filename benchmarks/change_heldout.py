"""Change detection on pairs never trained on: the 11 LEVIR-CD sample pairs split 8 / 3 by original image, BIT and
the siamese difference UNet over LeMeViT-Tiny trained by `lemevit train` with the settings of each arm, scored by
`lemevit eval` on the 3 held-out pairs.

    python benchmarks/change_heldout.py                      # every arm of both heads, then --collect
    python benchmarks/change_heldout.py --arm bit:before     # one arm (two may run at once)
    python benchmarks/change_heldout.py --collect            # results/change_heldout.json from the arms' records

Each arm's run is kept in RUNS/<head>-<arm>/ with record.json (not committed); a run that already finished is
scored again, not retrained. The held-out F1 is that of the last epoch's weights at the run's threshold; the best
threshold and the best epoch are chosen on the held-out pairs themselves, so they are upper bounds, not
estimates. results/change_heldout.json holds the arms that were run (not every arm with both heads nor every
seed); --collect keeps the records of arms whose runs are no longer in RUNS and prints the table of
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import time
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.change import ChangeConfig

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent / "tests" / "fixtures" / "levir_cd"
# Held out: three original LEVIR-CD images none of whose crops is trained on (test_2's two crops both train),
# 12-21 % changed pixels each. train_386 has no change at all and trains.
HELD_OUT = ("test_102_0512_0000", "test_55_0256_0000", "val_27_0000_0256")
TRAIN = ("test_121_0768_0256", "test_2_0000_0000", "test_2_0000_0512", "test_77_0512_0256", "test_7_0256_0512",
         "train_36_0512_0512", "train_386_0512_0768", "train_412_0512_0768")
# The README's command on 8 pairs (256 px crops, batch 4), 30 epochs.
COMMON = {"img_size": 256, "batch_size": 4, "epochs": 30, "seed": 0}
SCRATCH = {"model": "lemevit_tiny"}
BEFORE = {**SCRATCH, "dice_weight": 0.0, "change_balance": 0.0}  # the task's settings before this benchmark
CROPS128 = {"img_size": 128, "crops_per_pair": 8, "batch_size": 8}
AID150 = {"model": "lemevit_tiny.aid150", "pretrained": True}
PHOTOMETRIC = {**CROPS128, **AID150, "photometric": True}
# What the UNet needs beyond BIT's recipe: the distortion and a third of the rate.
UNET = {**PHOTOMETRIC, "lr": 3e-4}
ARMS = {
    "before": BEFORE,
    "scratch": SCRATCH,  # the Dice term and crops on change, from a random initialisation
    "defaults": {},  # the task's defaults: those two, from lemevit_tiny.aid150's weights
    # Four times the optimizer steps for twice the pixels an epoch: 128 px crops, 8 per pair, batch 8.
    "crops128": {**SCRATCH, **CROPS128},
    "crops128-aid150": {**CROPS128, **AID150},
    "crops128-aid150-before": {**CROPS128, **AID150, "dice_weight": 0.0, "change_balance": 0.0},
    "crops128-aid150-photometric": PHOTOMETRIC,
    "crops128-aid150-encoder0.1": {**CROPS128, **AID150, "lr_multipliers": {"encoder": 0.1}},
    # The UNet's validation F1 peaks mid-run and falls as it fits the 8 pairs: a slower rate, stochastic depth
    # with more weight decay, half the epochs.
    "crops128-aid150-photometric-lr3e-4": UNET,
    "crops128-aid150-photometric-dp0.1": {**PHOTOMETRIC, "drop_path_rate": 0.1, "weight_decay": 0.05},
    "crops128-aid150-photometric-e15": {**PHOTOMETRIC, "epochs": 15},
    "crops128-aid150-lr3e-4": {**CROPS128, **AID150, "lr": 3e-4},
    # Its F1 swings from epoch to epoch by 0.2 and more: an average of the weights over the last 100 steps.
    "crops128-aid150-photometric-lr3e-4-ema": {**UNET, "ema_decay": 0.99},
    "defaults-lr3e-4": {"lr": 3e-4},
    "defaults-e60": {"epochs": 60},
    # The README's first change command (128 px crops, 4 per pair, batch 8, 40 epochs) with the held-out split.
    "readme": {"img_size": 128, "crops_per_pair": 4, "batch_size": 8, "epochs": 40},
    # 128 px crops covering each pair once an epoch: the pixels of the 256 px crops in four times the steps.
    "img128": {"img_size": 128},
    "img128-photometric-lr3e-4": {"img_size": 128, "photometric": True, "lr": 3e-4},
    # The UNet's probabilities on unseen change are low (its best thresholds 0.1-0.2): more weight on the Dice
    # term, more crops on change.
    "crops128-aid150-photometric-lr3e-4-dice3-seed1": {**UNET, "dice_weight": 3.0, "seed": 1},
    "crops128-aid150-photometric-lr3e-4-balance0.8": {**UNET, "change_balance": 0.8},
}
# Other seeds of the task's defaults and of the recipes that work best, for the spread of one figure.
SEEDED = ("defaults", "crops128-aid150", "crops128-aid150-photometric-lr3e-4", "crops128-aid150-photometric-lr3e-4-ema",
          "crops128-aid150-photometric-lr3e-4-balance0.8")
ARMS |= {f"{arm}-seed{seed}": {**ARMS[arm], "seed": seed} for arm in SEEDED for seed in (1, 2)}
HEADS = ("bit", "siamunet")


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, dict):
            out += [flag, *(f"{k}={v}" for k, v in value.items())]
        else:
            out += [flag, str(value)]
    return out


def epoch_scores(run: Path) -> list[dict]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/f1")]
    return [{"epoch": int(r["epoch"]), "f1": float(r["val/f1"]), "recall": float(r["val/recall"]),
             "best_f1": float(r["val/best_f1"]) if r.get("val/best_f1") else None} for r in rows]


def scores(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("threshold", "f1", "precision", "recall", "iou", "best_threshold",
                                              "best_f1")} | {"per_pair_f1": {p["name"]: p["f1"]
                                                                              for p in metrics["per_pair"]}}


def run_arm(name: str, data: Path, runs: Path) -> dict:
    head, arm = name.split(":")
    split = runs / "split"
    split.mkdir(parents=True, exist_ok=True)
    for subset, pairs in (("train", TRAIN), ("val", HELD_OUT)):
        (split / f"{subset}.txt").write_text("\n".join(pairs) + "\n")
    run = runs / f"{head}-{arm}"
    settings = {**COMMON, "head": head, **ARMS[arm],
                "split_files": {"train": str(split / "train.txt"), "val": str(split / "val.txt")}}
    command = ["lemevit", "train", "--task", "change", "--data", str(data), *flags(settings), "--num-workers", "0",
               "--output", str(run)]
    finished = (run / "last.ckpt").is_file() and len(epoch_scores(run)) == settings["epochs"]
    if not finished:
        started = time.perf_counter()
        train(ChangeConfig(data=str(data), output=str(run), num_workers=0, accelerator="cpu", **settings),
              progress=False)
        print(f"{name}: trained in {(time.perf_counter() - started) / 60:.1f} min")
    last = evaluate_checkpoint(run / "last.ckpt", run / "eval_last", progress=False, num_workers=0)
    best = evaluate_checkpoint(run / "best.ckpt", run / "eval_best", progress=False, num_workers=0)
    record = {"head": head, "arm": arm, "command": shlex.join(command), "settings": settings,
              # Wall clock on a 2-core machine shared with other jobs: a measure of this run under that load only.
              "train_minutes": training_minutes(run / "last.ckpt"), "threads": torch.get_num_threads(),
              "held_out_last_epoch": scores(last), "held_out_best_epoch": scores(best),
              "val_per_epoch": epoch_scores(run)}
    with atomic_path(run / "record.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("head", "arm", "train_minutes", "held_out_last_epoch")}, indent=1))
    return record


def collect(runs: Path) -> None:
    # Arms recorded earlier whose runs are no longer in RUNS keep their record.
    stored = HERE / "results" / "change_heldout.json"
    records = json.loads(stored.read_text())["arms"] if stored.is_file() else {}
    records |= {f"{r['head']}:{r['arm']}": r for r in (json.loads(p.read_text()) for p in
                                                       sorted(runs.glob("*/record.json")))}
    result = {"train_pairs": list(TRAIN), "held_out_pairs": list(HELD_OUT), "common": COMMON,
              "arms": {name: records[name] for name in (f"{h}:{a}" for a in ARMS for h in HEADS) if name in records},
              "torch": torch.__version__, "device": "cpu",
              "machine": machine_description()}
    with atomic_path(stored) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print("| head | arm | seed | F1 (last epoch, 0.5) | precision | recall | F1 at best threshold | best epoch's F1 "
          "| training |\n|---|---|---|---|---|---|---|---|---|")
    for r in result["arms"].values():
        last, best = r["held_out_last_epoch"], r["held_out_best_epoch"]
        best_epoch = max(r["val_per_epoch"], key=lambda e: e["f1"])["epoch"]
        print(f"| {r['head']} | {r['arm']} | {r['settings']['seed']} | {last['f1'] or 0:.3f} | "
              f"{last['precision'] or 0:.3f} | {last['recall'] or 0:.3f} | {last['best_f1'] or 0:.3f} @ "
              f"{last['best_threshold']} | {best['f1'] or 0:.3f} (epoch {best_epoch}) | {r['train_minutes']:.1f} min |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--runs", default=str(HERE / "runs" / "change_heldout"))
    p.add_argument("--arm", action="append", choices=[f"{h}:{a}" for a in ARMS for h in HEADS],
                   help="HEAD:ARM to run (default: all)")
    p.add_argument("--collect", action="store_true", help="only write results/change_heldout.json")
    args = p.parse_args()
    runs = Path(args.runs)
    if not args.collect:
        for name in args.arm or [f"{h}:{a}" for a in ARMS for h in HEADS]:
            run_arm(name, Path(args.data), runs)
    collect(runs)


if __name__ == "__main__":
    main()
