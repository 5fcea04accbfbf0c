"""The pretraining of ``lemevit_tiny.aid150``, through ``lemevit train``, ``eval`` and ``export``.

    # AID's 150 px copy (repository zlima/testtensor, commit f6a0f746, folder AID/), without the demo's subset,
    # 10 % of each class held out (seed 0)
    python benchmarks/prepare_scene_sets.py --source AID --output /data/aid150 --name AID \\
        --exclude src/lemevit/demo_data/aid_subset --holdout 0.1
    python benchmarks/pretrain_aid150.py --data /data/aid150 --run runs/aid150_lemevit_tiny

Trains with ``TRAIN`` below (rerun, it resumes an interrupted run), evaluates ``best.ckpt`` on ``heldout/``, exports
the model in float16 into ``src/lemevit/weights/lemevit_tiny.aid150.safetensors`` and writes
results/pretrain_aid150_lemevit_tiny.json; the sha256 it prints goes into ``lemevit.models.pretrained``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import torch
from pretrain_zoo import RECIPE

from lemevit.cli import main as lemevit
from lemevit.engine import RunDirectory, training_minutes
from lemevit.io import atomic_path
from lemevit.io.checkpoint import read_checkpoint

HERE = Path(__file__).parent
WEIGHTS = HERE.parent / "src" / "lemevit" / "weights" / "lemevit_tiny.aid150.safetensors"
EPOCHS = 12
TRAIN = ["--model", "lemevit_tiny", "--img-size", "128", "--epochs", str(EPOCHS), *RECIPE]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the prepared folder: train/ and heldout/")
    p.add_argument("--run", type=Path, required=True)
    args = p.parse_args()

    last = args.run / "last.ckpt"
    finished = last.is_file() and read_checkpoint(last)["loops"]["fit_loop"]["epoch_progress"]["current"][
        "processed"] >= EPOCHS
    if not finished:
        resume = ["--resume"] if last.is_file() else []
        assert lemevit(["train", "--data", str(args.data / "train"), "--output", str(args.run), *TRAIN, *resume]) == 0
    evaluation = args.run / "heldout_eval"
    assert lemevit(["eval", "--checkpoint", str(args.run / "best.ckpt"), "--data", str(args.data / "heldout"),
                    "--output", str(evaluation)]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    exported = args.run / "export_fp16"
    assert lemevit(["export", "--checkpoint", str(args.run / "best.ckpt"), "--dtype", "fp16",
                    "--output", str(exported)]) == 0
    shutil.copyfile(exported / "model.safetensors", WEIGHTS)
    sha256 = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    record = {
        "weights": "lemevit_tiny.aid150", "sha256": sha256, "size_bytes": WEIGHTS.stat().st_size,
        "command": "lemevit train --data AID150/train --output RUN " + shlex.join(TRAIN),
        "train_images": len(RunDirectory(args.run).read_split("classification").subsets["train"]),
        "epochs": EPOCHS, "img_size": 128, "train_minutes": training_minutes(last),
        "heldout": {"top1": metrics["top1"], "top5": metrics["top5"], "num_images": metrics["num_images"]},
        "best_epoch": read_checkpoint(args.run / "best.ckpt")["epoch"],
        "torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
    }
    print(json.dumps(record, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    with atomic_path(HERE / "results" / "pretrain_aid150_lemevit_tiny.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
