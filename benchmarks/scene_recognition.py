"""Evidence that scene recognition learns: train from scratch on the shared AID sample (30 classes,
stratified 80/20 split, 128x128, CPU) and evaluate on the held-out 20 %.

    python benchmarks/scene_recognition.py --model lemevit_tiny --epochs 20 --name aid150_lemevit_tiny
    python benchmarks/scene_recognition.py --model resnet18 --epochs 20 --name aid150_resnet18

Writes results/<name>.json (accuracy, time, settings) and keeps the run in runs/<name>/ (not committed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.classification import ClassificationConfig

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "aid_150px"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="lemevit_tiny")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--crop-scale", type=float, nargs=2, default=[0.5, 1.0])
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--gradient-clip", type=float, default=1.0)
    p.add_argument("--name", required=True)
    args = p.parse_args()

    run = HERE / "runs" / args.name
    cfg = ClassificationConfig(data=args.data, output=str(run), model=args.model, img_size=args.img_size,
                               epochs=args.epochs, batch_size=args.batch_size, split=0.8, seed=0, lr=args.lr,
                               warmup_epochs=args.warmup_epochs, drop_path_rate=0.0,
                               label_smoothing=args.label_smoothing, crop_scale=args.crop_scale,
                               ema_decay=args.ema_decay, gradient_clip=args.gradient_clip, num_workers=0)
    train(cfg, resume=(run / "last.ckpt").is_file())
    minutes = training_minutes(run / "last.ckpt")
    metrics = evaluate_checkpoint(run / "best.ckpt", run / "eval", num_workers=0)
    record = {"setting": vars(args), "train_minutes": minutes, "top1": metrics["top1"], "top5": metrics["top5"],
              "num_test_images": metrics["num_images"], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "device": "cpu"}
    print(json.dumps(record, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    with atomic_path(HERE / "results" / f"{args.name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
