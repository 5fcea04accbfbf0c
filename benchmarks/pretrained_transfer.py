"""Proof that the AID-pretrained weights transfer: the same run started from ``lemevit_tiny.aid150`` and from
scratch, on data the pretraining never saw, after the same short budget.

    # UC Merced Land Use (21 classes x 100; benchmarks/prepare_scene_sets.py makes the folder), stratified 80/20
    python benchmarks/pretrained_transfer.py ucmerced --data /data/ucmerced/train --init scratch
    python benchmarks/pretrained_transfer.py ucmerced --data /data/ucmerced/train --init pretrained
    # UperNet on the shipped Potsdam tile: its left half trains, its right half scores (mIoU, 5 classes)
    python benchmarks/pretrained_transfer.py potsdam --init scratch
    python benchmarks/pretrained_transfer.py potsdam --init pretrained

Each arm is ``lemevit train`` with the same settings but ``--model lemevit_tiny.aid150 --pretrained``; the arms
of an experiment may run in separate sessions. Writes results/pretrained_transfer.json (one entry per experiment
and arm) and keeps the runs in runs/transfer_<experiment>_<init>/ (not committed); the same command resumes an
interrupted arm.
"""
from __future__ import annotations

import argparse
import csv
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.classification import ClassificationConfig
from lemevit.tasks.segmentation import SegmentationConfig

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "pretrained_transfer.json"
POTSDAM = Path(str(files("lemevit") / "demo_data" / "potsdam_seg"))
SCRATCH, PRETRAINED = "lemevit_tiny", "lemevit_tiny.aid150"


def potsdam_halves(folder: Path) -> Path:
    """The shipped Potsdam tile cut into a training half (left) and a validation half (right), in the
    ``img_dir/{train,val}`` ``ann_dir/{train,val}`` layout of ``lemevit train --task segmentation``."""
    if (folder / "ann_dir" / "val").is_dir():
        return folder
    for sub in ("img_dir", "ann_dir"):
        tile = next((POTSDAM / sub).iterdir())
        pixels = np.asarray(Image.open(tile))
        half = pixels.shape[1] // 2
        for subset, part in (("train", pixels[:, :half]), ("val", pixels[:, half:])):
            target = folder / sub / subset / tile.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(part)).save(target)
    return folder


def ucmerced_config(args, model: str, run: Path) -> ClassificationConfig:
    return ClassificationConfig(data=args.data, output=str(run), model=model, pretrained=model == PRETRAINED,
                                img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size, split=0.8,
                                seed=0, lr=args.lr, warmup_epochs=1.0, drop_path_rate=0.1, label_smoothing=0.1,
                                crop_scale=[0.5, 1.0], gradient_clip=1.0, num_workers=args.num_workers)


def potsdam_config(args, model: str, run: Path) -> SegmentationConfig:
    data = potsdam_halves(HERE / "runs" / "potsdam_halves")
    return SegmentationConfig(data=str(data), output=str(run), model=model, pretrained=model == PRETRAINED,
                              head="upernet", decoder_channels=128, preset="potsdam", img_size=args.img_size,
                              crops_per_tile=64, class_balance=0.5, window=256, stride=192, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, warmup_epochs=1.0, drop_path_rate=0.0,
                              num_workers=args.num_workers)


EXPERIMENTS = {
    # img_size, epochs, batch_size, lr
    "ucmerced": (ucmerced_config, (128, 6, 32, 1e-3)),
    "potsdam": (potsdam_config, (128, 24, 8, 1e-3)),
}


def validation_curve(run: Path, metric: str) -> list[float]:
    """The run's validation ``metric`` after each epoch, from its metrics.csv (best.ckpt is the best of them)."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [round(float(row[metric]), 4) for row in csv.DictReader(f) if row.get(metric)]


def record(experiment: str, arm: str, result: dict) -> dict:
    """Replace this arm's entry, keeping the others (read now: another arm may have finished meanwhile)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault(experiment, {})[arm] = result
    RESULTS.parent.mkdir(exist_ok=True)
    with atomic_path(RESULTS) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    return results[experiment]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--init", choices=("scratch", "pretrained"), required=True)
    p.add_argument("--data", help="ucmerced: the class folders of UC Merced")
    p.add_argument("--img-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args()
    make_config, defaults = EXPERIMENTS[args.experiment]
    for name, value in zip(("img_size", "epochs", "batch_size", "lr"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.experiment == "ucmerced" and not args.data:
        p.error("ucmerced needs --data (the UC Merced class folders)")

    run = HERE / "runs" / f"transfer_{args.experiment}_{args.init}"
    cfg = make_config(args, PRETRAINED if args.init == "pretrained" else SCRATCH, run)
    train(cfg, resume=(run / "last.ckpt").is_file())
    metrics = evaluate_checkpoint(run / "best.ckpt", run / "eval", progress=False, num_workers=0)
    scores = ({"top1": metrics["top1"], "top5": metrics["top5"], "num_images": metrics["num_images"]}
              if args.experiment == "ucmerced" else
              {"miou": metrics["miou"], "oa": metrics["oa"], "mf1": metrics["mf1"],
               "iou_per_class": {c: v["iou"] for c, v in metrics["per_class"].items()}})
    curve = validation_curve(run, "val/top1" if args.experiment == "ucmerced" else "val/miou")
    result = {"model": cfg.model, "pretrained": cfg.pretrained, "train_minutes": training_minutes(run / "last.ckpt"),
              **scores, "validation_per_epoch": curve, "setting": {k: v for k, v in vars(args).items() if k != "init"},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    print(json.dumps(record(args.experiment, args.init, result), indent=1))


if __name__ == "__main__":
    main()
