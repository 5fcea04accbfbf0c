"""Evidence that semantic segmentation learns: UperNet over LeMeViT-Tiny, trained from scratch on CPU on the
shared Potsdam, Vaihingen and LoveDA samples, overfits them (mIoU on the training tiles, blended sliding
window). Not a timed test: each data set takes minutes.

    python benchmarks/segmentation_overfit.py                      # all three, one after the other
    python benchmarks/segmentation_overfit.py --datasets potsdam --epochs 20

Reads ../shared/data/<name>_seg_samples (the package's demo_data copies when that is absent); writes
results/segmentation_overfit.json and keeps the runs in runs/seg_overfit_<name>/ (not committed). The same
command resumes an interrupted run; the training time recorded then includes the time before the interruption.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from importlib.resources import files
from pathlib import Path

import torch

from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.segmentation import SegmentationConfig

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data"
DEMO = Path(str(files("lemevit") / "demo_data"))
DATASETS = ("potsdam", "vaihingen", "loveda")


def data_folder(name: str) -> Path:
    shared = SHARED / f"{name}_seg_samples"
    return shared if shared.is_dir() else DEMO / f"{name}_seg"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--model", default="lemevit_tiny")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--decoder-channels", type=int, default=128)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--crops-per-tile", type=int, default=128)
    p.add_argument("--class-balance", type=float, default=0.5)
    p.add_argument("--dice-weight", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--stride", type=int, default=192)
    p.add_argument("--runs", type=Path, default=HERE / "runs", help="where the runs go (one folder per data set)")
    args = p.parse_args()

    output = HERE / "results" / "segmentation_overfit.json"
    for name in args.datasets:
        run = args.runs / f"seg_overfit_{name}"
        cfg = SegmentationConfig(data=str(data_folder(name)), output=str(run), model=args.model, head="upernet",
                                 decoder_channels=args.decoder_channels, preset=name, img_size=args.img_size,
                                 crops_per_tile=args.crops_per_tile, class_balance=args.class_balance,
                                 dice_weight=args.dice_weight, window=args.window, stride=args.stride,
                                 epochs=args.epochs, batch_size=args.batch_size, split=1.0, lr=args.lr,
                                 warmup_epochs=1.0, drop_path_rate=0.0, accelerator="cpu", devices=1, num_workers=0)
        resumed, cpu = (run / "last.ckpt").is_file(), time.process_time()
        train(cfg, resume=resumed)
        # The CPU time of an interrupted process is lost; the training time is carried in the checkpoints.
        cpu = None if resumed else (time.process_time() - cpu) / 60
        # The run's tiles: split 1.0.
        metrics = evaluate_checkpoint(run / "best.ckpt", run / "eval", progress=False, num_workers=0)
        result = {
            "data": cfg.data, "num_tiles": metrics["num_tiles"],
            "train_minutes": training_minutes(run / "last.ckpt"), "train_cpu_minutes": cpu,
            "miou": metrics["miou"], "oa": metrics["oa"], "mf1": metrics["mf1"],
            "iou_per_class": {c: v["iou"] for c, v in metrics["per_class"].items()},
            **validation_curve(run),
            "setting": {k: v for k, v in vars(args).items() if k not in ("datasets", "runs")},
            "threads": torch.get_num_threads(),
        }
        print(json.dumps({name: result}, indent=1))
        record_result(output, name, result)


def validation_curve(run: Path, target: float = 0.8) -> dict:
    """The run's validation mIoU (on its training tiles) after each epoch, from its log, and the first epoch
    (counted from 1) that reached ``target``."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        curve = [float(row["val/miou"]) for row in csv.DictReader(f) if row["val/miou"]]
    first = next((epoch for epoch, miou in enumerate(curve, 1) if miou >= target), None)
    return {"val_miou_by_epoch": [round(m, 4) for m in curve], f"first_epoch_miou_{target}": first}


def record_result(output: Path, name: str, result: dict) -> None:
    """Replace ``name``'s entry in the record, keeping the other data sets' (read now: a run of another data
    set may have finished meanwhile)."""
    results = json.loads(output.read_text())["results"] if output.is_file() else {}
    results[name] = result
    record = {"head": "upernet (pyramid pooling + FPN, auxiliary FCN head, loss weight 0.4)",
              "evaluated_on": "the training tiles, blended sliding window", "results": results,
              "torch": torch.__version__, "device": "cpu"}
    output.parent.mkdir(exist_ok=True)
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
