"""Proof that pretrained weights transfer: the same run started from registered weights (``--weights``) and from
scratch (the same architecture, randomly initialised), on data the pretraining never saw, after the same short
budget.

    # UC Merced Land Use (21 classes x 100; benchmarks/prepare_scene_sets.py makes the folder), stratified 80/20:
    # only for weights that never saw it (lemevit_tiny.aid150; the zoo's *.aid_ucm trained on it)
    python benchmarks/pretrained_transfer.py ucmerced --data /data/ucmerced/train --init scratch
    python benchmarks/pretrained_transfer.py ucmerced --data /data/ucmerced/train --init pretrained
    # UperNet on the shipped Potsdam tile: its left half trains, its right half scores (mIoU, 5 classes)
    python benchmarks/pretrained_transfer.py potsdam --weights lvt.aid_ucm --init scratch
    python benchmarks/pretrained_transfer.py potsdam --weights lvt.aid_ucm --init pretrained
    # BIT on the LEVIR-CD sample pairs: 8 train, the 3 of change_heldout.py score (F1 of change), seeds 0, 1, 2
    python benchmarks/pretrained_transfer.py levir --weights lvt.aid_ucm --init scratch --seed 1

Each arm is ``lemevit train`` with the same settings but ``--model WEIGHTS --pretrained``; the arms of an
experiment may run in separate sessions. Writes results/pretrained_transfer.json (one entry per weights,
experiment and arm) and keeps the runs in runs/transfer_<weights>_<experiment>_<arm>/ (not committed); the same
command resumes an interrupted arm.
"""
from __future__ import annotations

import argparse
import csv
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from change_heldout import DEFAULT_DATA as LEVIR
from change_heldout import HELD_OUT, TRAIN
from PIL import Image

from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.models.pretrained import PRETRAINED
from lemevit.tasks.change import ChangeConfig
from lemevit.tasks.classification import ClassificationConfig
from lemevit.tasks.segmentation import SegmentationConfig

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "pretrained_transfer.json"
POTSDAM = Path(str(files("lemevit") / "demo_data" / "potsdam_seg"))
# The experiments whose data each set of weights trained on, by tag: they prove nothing of those weights.
SEEN = {"aid_ucm": {"ucmerced"}}


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


def levir_split(folder: Path) -> dict[str, str]:
    """The list files of change_heldout.py's split of the LEVIR-CD sample pairs: 8 train, 3 score."""
    folder.mkdir(parents=True, exist_ok=True)
    for subset, pairs in (("train", TRAIN), ("val", HELD_OUT)):
        (folder / f"{subset}.txt").write_text("\n".join(pairs) + "\n")
    return {"train": str(folder / "train.txt"), "val": str(folder / "val.txt")}


def ucmerced_config(args, model: str, run: Path) -> ClassificationConfig:
    return ClassificationConfig(data=args.data, output=str(run), model=model, pretrained="." in model,
                                img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size, split=0.8,
                                seed=0, lr=args.lr, warmup_epochs=1.0, drop_path_rate=0.1, label_smoothing=0.1,
                                crop_scale=[0.5, 1.0], gradient_clip=1.0, num_workers=args.num_workers)


def potsdam_config(args, model: str, run: Path) -> SegmentationConfig:
    data = potsdam_halves(HERE / "runs" / "potsdam_halves")
    return SegmentationConfig(data=str(data), output=str(run), model=model, pretrained="." in model,
                              head="upernet", decoder_channels=128, preset="potsdam", img_size=args.img_size,
                              crops_per_tile=64, class_balance=0.5, window=256, stride=192, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, warmup_epochs=1.0, drop_path_rate=0.0,
                              num_workers=args.num_workers)


def levir_config(args, model: str, run: Path) -> ChangeConfig:
    # change_heldout.py's "defaults" arm: the task's defaults, 256 px, batch 4, 30 epochs.
    return ChangeConfig(data=str(LEVIR), output=str(run), model=model, pretrained="." in model, head="bit",
                        split_files=levir_split(HERE / "runs" / "levir_split"), img_size=args.img_size,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, num_workers=0)


EXPERIMENTS = {
    # img_size, epochs, batch_size, lr
    "ucmerced": (ucmerced_config, (128, 6, 32, 1e-3)),
    "potsdam": (potsdam_config, (128, 24, 8, 1e-3)),
    "levir": (levir_config, (256, 30, 4, ChangeConfig.lr)),
}
VALIDATION_METRIC = {"ucmerced": "val/top1", "potsdam": "val/miou", "levir": "val/f1"}


def scores(experiment: str, metrics: dict) -> dict:
    if experiment == "ucmerced":
        return {"top1": metrics["top1"], "top5": metrics["top5"], "num_images": metrics["num_images"]}
    if experiment == "potsdam":
        return {"miou": metrics["miou"], "oa": metrics["oa"], "mf1": metrics["mf1"],
                "iou_per_class": {c: v["iou"] for c, v in metrics["per_class"].items()}}
    return {key: metrics[key] for key in ("f1", "precision", "recall", "iou", "best_threshold", "best_f1")}


def validation_curve(run: Path, metric: str) -> list[float]:
    """The run's validation ``metric`` after each epoch, from its metrics.csv (best.ckpt is the best of them)."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [round(float(row[metric]), 4) for row in csv.DictReader(f) if row.get(metric)]


def record(weights: str, experiment: str, arm: str, result: dict) -> dict:
    """Replace this arm's entry, keeping the others (read now: another arm may have finished meanwhile)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault(weights, {}).setdefault(experiment, {})[arm] = result
    RESULTS.parent.mkdir(exist_ok=True)
    with atomic_path(RESULTS) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    return results[weights][experiment]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--weights", default="lemevit_tiny.aid150", choices=sorted(PRETRAINED),
                   help="the pretrained weights; scratch is their architecture (default lemevit_tiny.aid150)")
    p.add_argument("--init", choices=("scratch", "pretrained"), required=True)
    p.add_argument("--seed", type=int, default=0, help="levir: the run's seed (its arm is named INIT-seedN)")
    p.add_argument("--data", help="ucmerced: the class folders of UC Merced")
    p.add_argument("--img-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--num-workers", type=int, default=2,
                   help="ucmerced and potsdam's loader workers (levir's eight pairs load in the main process)")
    args = p.parse_args()
    make_config, defaults = EXPERIMENTS[args.experiment]
    for name, value in zip(("img_size", "epochs", "batch_size", "lr"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.experiment == "ucmerced" and not args.data:
        p.error("ucmerced needs --data (the UC Merced class folders)")
    if args.experiment in SEEN.get(args.weights.split(".", 1)[1], ()):
        p.error(f"{args.weights} trained on the data of {args.experiment}: it proves no transfer")

    arm = f"{args.init}-seed{args.seed}" if args.experiment == "levir" else args.init
    run = HERE / "runs" / f"transfer_{args.weights}_{args.experiment}_{arm}"
    model = args.weights if args.init == "pretrained" else args.weights.split(".", 1)[0]
    cfg = make_config(args, model, run)
    train(cfg, resume=(run / "last.ckpt").is_file())
    checkpoint = run / ("last.ckpt" if args.experiment == "levir" else "best.ckpt")
    metrics = evaluate_checkpoint(checkpoint, run / "eval", progress=False, num_workers=0)
    result = {"model": cfg.model, "pretrained": cfg.pretrained, "scored": checkpoint.name,
              "train_minutes": training_minutes(run / "last.ckpt"), **scores(args.experiment, metrics),
              "validation_per_epoch": validation_curve(run, VALIDATION_METRIC[args.experiment]),
              "setting": {**{k: v for k, v in vars(args).items() if k != "init"}, "num_workers": cfg.num_workers},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    print(json.dumps(record(args.weights, args.experiment, arm, result), indent=1))


if __name__ == "__main__":
    main()
