"""Pretrain any model of the zoo on remote-sensing scenes (AID 150 px + UC Merced), through ``lemevit train``,
``eval`` and ``export``: the recipe of ``lemevit_tiny.aid150`` (benchmarks/pretrain_aid150.py) for every architecture.

    # AID's 150 px copy (repository zlima/testtensor, commit f6a0f746, folder AID/) without the demo's subset, and
    # UC Merced (repository 527760681/Keras-Remote-sensing-image-retrieval, commit ab097bbb,
    # UCMerced_LandUse/Images), each with 10 % of every class held out (seed 0)
    python benchmarks/prepare_scene_sets.py --source AID --output /data/aid150 --name AID \\
        --exclude src/lemevit/demo_data/aid_subset --holdout 0.1
    python benchmarks/prepare_scene_sets.py --source UCMerced_LandUse/Images --output /data/ucmerced \\
        --name "UC Merced Land Use" --holdout 0.1
    # one label space of 51 classes, each class folder named after its data set (symbolic links)
    mkdir -p /data/zoo/{train,heldout,heldout_aid,heldout_ucm}
    for c in /data/aid150/train/*/; do c=$(basename $c); ln -s /data/aid150/train/$c /data/zoo/train/AID_$c
        for s in heldout heldout_aid; do ln -s /data/aid150/heldout/$c /data/zoo/$s/AID_$c; done; done
    for c in /data/ucmerced/train/*/; do c=$(basename $c); ln -s /data/ucmerced/train/$c /data/zoo/train/UCM_$c
        for s in heldout heldout_ucm; do ln -s /data/ucmerced/heldout/$c /data/zoo/$s/UCM_$c; done; done
    python benchmarks/pretrain_zoo.py --models lvt vvt_tiny lemevit_small --data /data/zoo --runs /work/zoo-runs

One label space rather than one head per data set: the class-folder tooling (train, eval, predict, the split) takes it
as it is, and a head over all 51 classes is what a user fine-tunes from or predicts with. Classes that two data sets
share by name (AID's Beach, UC Merced's beach) stay apart: the two labelled them by different rules.

Trains each of ``--models`` in turn, one at a time, in ``--runs``/<model> with ``RECIPE`` below (rerun, it resumes
an interrupted run from its last checkpoint and skips a model whose record and weights file are there;
``zoo_pareto.py`` scores the same runs), evaluates ``best.ckpt`` on every ``heldout*/`` folder of ``--data`` (all
held-out images, and each data set's alone: a model's classes are matched by name, so a 30-class AID folder is
scored among all 51 classes), exports the model in float16 into ``--weights`` as ``<model>.<tag>.safetensors`` and
writes ``--results``/pretrain_zoo_<model>.json: what an entry of ``lemevit.models.pretrained.PRETRAINED`` needs
(sha256, classes, held-out top-1/top-5, data, command, machine).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import torch

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.engine import RunDirectory, training_minutes
from lemevit.io import atomic_path
from lemevit.io.checkpoint import read_checkpoint

HERE = Path(__file__).parent
# The recipe of lemevit_tiny.aid150 and of the zoo, less the model, size and epochs (given by the flags below).
RECIPE = ["--batch-size", "64", "--split", "0.95", "--seed", "0", "--lr", "1.5e-3", "--drop-path-rate", "0.1",
          "--gradient-clip", "1.0", "--label-smoothing", "0.1", "--crop-scale", "0.8", "1.0", "--ema-decay", "0.998",
          "--checkpoint-steps", "16"]


def epochs_done(last: Path) -> int:
    return read_checkpoint(last)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True,
                   help="model names of lemevit or timm, trained in this order: lvt vvt_tiny lemevit_small ...")
    p.add_argument("--data", type=Path, required=True, help="the prepared folder: train/ and heldout*/")
    p.add_argument("--runs", type=Path, required=True,
                   help="one run directory per model, RUNS/<model> (kept outside the repository)")
    p.add_argument("--weights", type=Path, help="where the fp16 safetensors go (default RUNS/<model>/weights)")
    p.add_argument("--tag", default="aid_ucm", help="the weights' timm tag: <model>.<tag> (default aid_ucm)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--results", type=Path, help="the records' folder (default benchmarks/results: "
                                                "pretrain_zoo_<model>.json)")
    args = p.parse_args()
    for model in args.models:
        pretrain(model, args.runs / model, args)


def already_recorded(results: Path, args: argparse.Namespace) -> bool:
    """Whether ``results`` records a finished run of this setting whose weights file is still the one it names: the
    queue is rerun after every interruption, and scoring and exporting a finished model again takes minutes."""
    if not results.is_file():
        return False
    record = json.loads(results.read_text())
    weights = Path(record["file"])
    return ((record["epochs"], record["img_size"]) == (args.epochs, args.img_size) and weights.is_file()
            and hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"])


def pretrain(model: str, run: Path, args: argparse.Namespace) -> None:
    results = (args.results or HERE / "results") / f"pretrain_zoo_{model}.json"
    if already_recorded(results, args):
        print(f"{model}: done, recorded in {results}", flush=True)
        return
    train = ["--model", model, "--img-size", str(args.img_size), "--epochs", str(args.epochs), *RECIPE]
    last = run / "last.ckpt"
    if not (last.is_file() and epochs_done(last) >= args.epochs):
        resume = ["--resume"] if last.is_file() else []
        if resume:
            print(f"resuming {run} after {epochs_done(last)} of {args.epochs} epochs", flush=True)
        assert lemevit(["train", "--data", str(args.data / "train"), "--output", str(run), *train, *resume]) == 0

    heldout = {}
    for folder in sorted(args.data.glob("heldout*")):
        evaluation = run / f"{folder.name}_eval"
        assert lemevit(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(folder),
                        "--output", str(evaluation)]) == 0
        metrics = json.loads((evaluation / "metrics.json").read_text())
        heldout[folder.name] = {"top1": metrics["top1"], "top5": metrics["top5"], "num_images": metrics["num_images"]}

    exported = run / "export_fp16"
    assert lemevit(["export", "--checkpoint", str(run / "best.ckpt"), "--dtype", "fp16",
                    "--output", str(exported)]) == 0
    name = f"{model}.{args.tag}"
    weights = (args.weights or run / "weights") / f"{name}.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        shutil.copyfile(exported / "model.safetensors", tmp)
    split = RunDirectory(run).read_split("classification")
    record = {
        "weights": name, "file": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
        "command": "lemevit train --data ZOO/train --output RUN " + shlex.join(train),
        "script": f"python benchmarks/pretrain_zoo.py --models {model} --data ZOO --runs RUNS --epochs {args.epochs} "
                  f"--img-size {args.img_size}",
        "data": "AID 150 px (zlima/testtensor@f6a0f746, AID/) without the demo subset + UC Merced "
                "(527760681/Keras-Remote-sensing-image-retrieval@ab097bbb, UCMerced_LandUse/Images); each with a "
                "stratified 10 % per class held out (seed 0); one label space, class folders AID_<class>, UCM_<class>",
        "class_names": split.meta["class_names"],
        "train_images": len(split.subsets["train"]), "val_images": len(split.subsets["val"]),
        "epochs": args.epochs, "img_size": args.img_size, "train_minutes": training_minutes(last),
        "heldout": heldout, "best_epoch": read_checkpoint(run / "best.ckpt")["epoch"],
        "torch": torch.__version__, "machine": machine_description(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(record, indent=1))
    results.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(results) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
