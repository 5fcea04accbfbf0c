"""Evidence that panoptic segmentation learns through the product: the shipped Potsdam tile made panoptic by
``lemevit prepare panoptic`` (buildings and cars as things, fragments under 16 px left out), Panoptic FPN trained on
it through ``lemevit.engine.train`` (what ``lemevit train --task panoptic`` runs) on the CPU, and scored on the same
tile (split 1.0: an overfitting check, not a held-out score) window by window. Not a timed test: it takes about
20 minutes on one thread.

    python benchmarks/panoptic_potsdam.py
    python benchmarks/panoptic_potsdam.py --model lemevit_tiny --epochs 40     # from scratch

Writes results/panoptic_potsdam.json (the command line equivalent, the training time, PQ/SQ/RQ overall, of
things, of stuff and per class, and the validation PQ after each validated epoch) and keeps the data set and
the run in runs/panoptic_potsdam/ (not committed). The same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from importlib.resources import files
from pathlib import Path

import torch

from lemevit.data.panoptic import ANNOTATIONS_FILE, prepare_panoptic
from lemevit.engine import evaluate_checkpoint, train, training_minutes
from lemevit.io import atomic_path
from lemevit.tasks.panoptic import PanopticConfig

HERE = Path(__file__).parent
POTSDAM = Path(str(files("lemevit") / "demo_data" / "potsdam_seg"))
THINGS, MIN_AREA = ("building", "car"), 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lemevit_tiny.aid150", help="the backbone; a tagged name starts from its "
                                                                  "pretrained weights")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--crops-per-image", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--val-every", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--semantic-channels", type=int, default=128)
    p.add_argument("--rpn-proposals", type=int, default=256)
    p.add_argument("--runs", type=Path, default=HERE / "runs" / "panoptic_potsdam")
    args = p.parse_args()

    data, run = args.runs / "data", args.runs / "run"
    if not (data / ANNOTATIONS_FILE).is_file():
        prepare_panoptic(POTSDAM, data, THINGS, preset="potsdam", min_area=MIN_AREA)
    settings = dict(model=args.model, pretrained="." in args.model, img_size=args.img_size,
                    crops_per_image=args.crops_per_image, batch_size=args.batch_size, epochs=args.epochs,
                    val_every=args.val_every, lr=args.lr, warmup_epochs=2.0, fpn_channels=args.fpn_channels,
                    semantic_channels=args.semantic_channels, rpn_proposals=args.rpn_proposals, split=1.0,
                    drop_path_rate=0.0)
    cfg = PanopticConfig(data=str(data), output=str(run), accelerator="cpu", devices=1, num_workers=0, **settings)
    resumed, started = (run / "last.ckpt").is_file(), time.perf_counter()
    train(cfg, resume=resumed, progress=False)
    wall = (time.perf_counter() - started) / 60
    metrics = evaluate_checkpoint(run / "best.ckpt", run / "eval", progress=False, num_workers=0)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
                     for k, v in settings.items() if v is not False)
    result = {
        "commands": [f"lemevit prepare panoptic --data {POTSDAM} --preset potsdam --output DATA --things "
                     f"{' '.join(THINGS)} --min-area {MIN_AREA}",
                     f"lemevit train --task panoptic --data DATA --output RUN --accelerator cpu --num-workers 0 "
                     f"{flags}",
                     "lemevit eval --checkpoint RUN/best.ckpt --output RUN/eval"],
        "train_minutes": training_minutes(run / "last.ckpt"), "wall_minutes_this_call": None if resumed else wall,
        "evaluated_on": "the training tile (split 1.0), window by window",
        "pq": metrics["pq"], "sq": metrics["sq"], "rq": metrics["rq"],
        "things": metrics["things"], "stuff": metrics["stuff"], "per_class": metrics["per_class"],
        "window": metrics["window"], "stride": metrics["stride"], "fusion": metrics["fusion"],
        "val_pq_by_epoch": validation_curve(run),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
    }
    print(json.dumps(result, indent=1))
    output = HERE / "results" / "panoptic_potsdam.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def validation_curve(run: Path) -> dict[int, float]:
    """The validation PQ after each validated epoch (counted from 1), from the run's log."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return {int(row["epoch"]) + 1: round(float(row["val/pq"]), 4) for row in csv.DictReader(f) if row["val/pq"]}


if __name__ == "__main__":
    main()
