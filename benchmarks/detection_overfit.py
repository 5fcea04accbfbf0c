"""Evidence that Oriented R-CNN learns, trained through `lemevit train --task detection` (the product's run,
schedule and validation): overfit the shared DOTA v1.0 samples (five images, 11 classes present) with a
LeMeViT-Tiny backbone from scratch on CPU, on 512x512 windows, then measure DOTA mAP50 on the same full images
with `lemevit eval` (window and merge, polygon IoU 0.5, difficult objects ignored).

    python benchmarks/detection_overfit.py --epochs 60

The same command resumes an interrupted run (the training time recorded then includes the time before the
interruption). Writes results/detection_overfit.json (mAP, per-class AP, validation mAP50 by epoch, time,
settings) and keeps the run in runs/<name>/ (not committed).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.detection import DetectionConfig

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "dota_v1_samples"
LOCAL = HERE.parent / "tests" / "fixtures" / "dota_v1_samples"  # two of the five images, for clones without ../shared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED if SHARED.is_dir() else LOCAL))
    p.add_argument("--model", default="lemevit_tiny")
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--val-every", type=int, default=5, help="validation scores the five full images: a minute")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--rpn-proposals", type=int, default=1000)
    p.add_argument("--test-proposals", type=int, default=500)
    p.add_argument("--name", default="detection_overfit")
    p.add_argument("--runs", type=Path, default=HERE / "runs")
    args = p.parse_args()

    run = args.runs / args.name
    # split 1.0: validation and the evaluation are on the training images, which is what overfitting measures.
    cfg = DetectionConfig(data=args.data, output=str(run), model=args.model, img_size=args.img_size,
                          overlap=args.overlap, batch_size=args.batch_size, epochs=args.epochs,
                          val_every=args.val_every, split=1.0,
                          lr=args.lr, warmup_epochs=args.warmup_epochs, drop_path_rate=0.0,
                          fpn_channels=args.fpn_channels, rpn_proposals=args.rpn_proposals,
                          test_proposals=args.test_proposals, num_workers=0, accelerator="cpu", devices=1)
    train(cfg, resume=(run / "last.ckpt").is_file())
    metrics = evaluate_checkpoint(run / "best.ckpt", run / "eval", num_workers=0)
    with open(run / "logs" / "metrics.csv", newline="") as f:
        curve = {int(r["epoch"]) + 1: round(float(r["val/map50"]), 4) for r in csv.DictReader(f) if r.get("val/map50")}
    record = {
        "what": "Oriented R-CNN (FPN + P6) with a from-scratch backbone overfitting the shared DOTA v1.0 samples, "
                "trained by lemevit train (AdamW, warm-up + cosine, gradient clip 35); mAP50 of best.ckpt on the "
                "training images by lemevit eval (full-image DOTA protocol)",
        "command": f"python benchmarks/detection_overfit.py --epochs {args.epochs}",
        "data": args.data, "num_images": metrics["num_images"],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "map50": metrics["map50"], "per_class": metrics["per_class"], "val_map50_by_epoch": curve,
        "train_minutes": training_minutes(run / "last.ckpt"), "threads": torch.get_num_threads(), "device": "cpu",
        "torch": torch.__version__, "machine": machine_description(),
    }
    output = HERE / "results" / "detection_overfit.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"mAP50 on the training images: {metrics['map50']:.3f} after {args.epochs} epochs "
          f"({record['train_minutes']:.1f} min of training); wrote {output}")


if __name__ == "__main__":
    main()
