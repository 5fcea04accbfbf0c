"""Evidence that change detection learns: BIT over LeMeViT-Tiny, from scratch on CPU, overfits the 11 LEVIR-CD
sample pairs shipped with the tests (trained and evaluated on the same pairs, whole 256x256 pairs).

    python benchmarks/change_overfit.py

Writes results/change_overfit.json (change-class F1, IoU, precision, recall, OA, time, settings) and keeps
the run in runs/change_overfit/ (not committed). The target is F1 >= 0.8 on the training pairs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.engine import evaluate_checkpoint, train
from lemevit.io import atomic_path
from lemevit.tasks.change import ChangeConfig

HERE = Path(__file__).parent
DEFAULT_DATA = HERE.parent / "tests" / "fixtures" / "levir_cd"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="lemevit_tiny")
    p.add_argument("--head", default="bit")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--crops-per-pair", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--name", default="change_overfit")
    args = p.parse_args()

    run = HERE / "runs" / args.name
    if run.exists():
        shutil.rmtree(run)
    # split 1.0: the validation pairs are the training pairs, which is what overfitting is measured on.
    cfg = ChangeConfig(data=args.data, output=str(run), model=args.model, head=args.head, img_size=args.img_size,
                       crops_per_pair=args.crops_per_pair, window=256, epochs=args.epochs, batch_size=args.batch_size,
                       split=1.0, lr=args.lr, seed=0, num_workers=0, accelerator="cpu")
    start, cpu = time.perf_counter(), time.process_time()
    train(cfg, progress=False)
    # CPU minutes as well: another job on the machine stretches the wall clock, not the work done.
    minutes, cpu_minutes = (time.perf_counter() - start) / 60, (time.process_time() - cpu) / 60
    metrics = evaluate_checkpoint(run / "last.ckpt", run / "eval", data=args.data, progress=False, num_workers=0)
    record = {"setting": vars(args), "train_minutes": minutes, "train_cpu_minutes": cpu_minutes,
              **{key: metrics[key] for key in ("f1", "iou", "precision", "recall", "oa", "num_pairs")},
              "per_pair_f1": {p["name"]: p["f1"] for p in metrics["per_pair"]},
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
              "machine": machine_description()}
    print(json.dumps(record, indent=1))
    with atomic_path(HERE / "results" / f"{args.name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
