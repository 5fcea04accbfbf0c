"""Every task once through the `lemevit` command of a plain install (no extras): train one epoch, eval, predict.

    python .ci/smoke.py WORK_DIR

Run from the repository root with the Python of a virtual environment where only `pip install .` was done, so
that a runtime import that is not a declared dependency fails here. Tiny data and a tiny backbone: a minute or
two on a 2-core CPU.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path("tests/fixtures")


def lemevit(*args: str) -> None:
    command = [sys.executable, "-m", "lemevit.cli", *args]
    print("$ lemevit " + " ".join(args), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): lemevit {' '.join(args)}\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "", flush=True)


def scenes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("Farmland", "Forest")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            image[..., c] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def main() -> None:
    work = Path(sys.argv[1])
    extras = [name for name in ("rasterio", "pytest") if importlib.util.find_spec(name) is not None]
    if extras:
        sys.exit(f"this environment has {extras}: the smoke run must see a plain install only")
    common = ["--model", "resnet10t", "--epochs", "1", "--num-workers", "0", "--accelerator", "cpu"]

    data = scenes(work / "scenes")
    lemevit("train", "--data", str(data), "--output", str(work / "cls"), "--img-size", "32", "--batch-size", "4",
            "--split", "0.5", *common)
    lemevit("eval", "--checkpoint", str(work / "cls" / "best.ckpt"), "--output", str(work / "cls-eval"),
            "--num-workers", "0")
    lemevit("predict", "--checkpoint", str(work / "cls" / "best.ckpt"), str(data), "--output",
            str(work / "cls.csv"), "--num-workers", "0")

    import lemevit as package

    potsdam = Path(package.__file__).parent / "demo_data" / "potsdam_seg"
    lemevit("train", "--task", "segmentation", "--data", str(potsdam), "--preset", "potsdam", "--output",
            str(work / "seg"), "--img-size", "64", "--batch-size", "2", "--crops-per-tile", "2", "--split", "1.0",
            "--decoder-channels", "16", "--window", "256", *common)
    lemevit("eval", "--checkpoint", str(work / "seg" / "best.ckpt"), "--output", str(work / "seg-eval"),
            "--num-workers", "0")
    tile = next((potsdam / "img_dir").iterdir())
    lemevit("predict", "--checkpoint", str(work / "seg" / "best.ckpt"), str(tile), "--output",
            str(work / "seg.png"), "--window", "256")

    panoptic = work / "potsdam_panoptic"
    lemevit("prepare", "panoptic", "--data", str(potsdam), "--preset", "potsdam", "--output", str(panoptic),
            "--things", "building", "car", "--min-area", "16")
    lemevit("train", "--task", "panoptic", "--data", str(panoptic), "--output", str(work / "pan"), "--img-size", "64",
            "--batch-size", "2", "--crops-per-image", "2", "--split", "1.0", "--fpn-channels", "32",
            "--semantic-channels", "32", "--rpn-proposals", "100", "--test-proposals", "50", "--window", "256",
            *common)
    lemevit("eval", "--checkpoint", str(work / "pan" / "best.ckpt"), "--output", str(work / "pan-eval"),
            "--num-workers", "0")
    lemevit("predict", "--checkpoint", str(work / "pan" / "best.ckpt"), str(tile), "--output", str(work / "pan-out"))

    levir = FIXTURES / "levir_cd"
    lemevit("train", "--task", "change", "--data", str(levir), "--output", str(work / "change"), "--img-size", "64",
            "--batch-size", "4", "--crops-per-pair", "1", "--window", "128", "--split", "0.8", *common)
    lemevit("eval", "--checkpoint", str(work / "change" / "best.ckpt"), "--output", str(work / "change-eval"),
            "--num-workers", "0")
    lemevit("predict", "--checkpoint", str(work / "change" / "best.ckpt"), "--pair",
            str(levir / "A" / "test_2_0000_0000.png"), str(levir / "B" / "test_2_0000_0000.png"), "--output",
            str(work / "change.png"))

    dota = FIXTURES / "dota_v1_samples"
    lemevit("train", "--task", "detection", "--data", str(dota), "--output", str(work / "det"), "--img-size", "256",
            "--batch-size", "2", "--split", "1.0", "--fpn-channels", "32", "--rpn-proposals", "100",
            "--test-proposals", "50", *common)
    lemevit("eval", "--checkpoint", str(work / "det" / "best.ckpt"), "--output", str(work / "det-eval"),
            "--num-workers", "0")
    lemevit("predict", "--checkpoint", str(work / "det" / "best.ckpt"), str(dota / "images"), "--output",
            str(work / "det-out"))
    print("every task trained, evaluated and predicted with a plain install")


if __name__ == "__main__":
    main()
